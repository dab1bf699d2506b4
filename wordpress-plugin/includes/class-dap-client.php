<?php
/**
 * REST client for dap-server.
 *
 * @package DistributedDataAnalysis
 */

defined( 'ABSPATH' ) || exit;

/**
 * Talks to dap-server's `/api/v1` with `wp_remote_request()`. Every method returns the decoded
 * JSON body or a WP_Error:
 * - 4xx with the server's typed body `{"error":{"code","message",…}}` → that code and message,
 *   with `status` (and `details`: the error's other fields, when present) in the error data;
 * - 5xx → `dap_server_error`;
 * - timeout / connection refused / DNS → `dap_unreachable`;
 * - no server configured → `dap_not_configured`.
 */
class DAP_Client {

	/**
	 * Base URL without trailing slash.
	 *
	 * @var string
	 */
	private $base_url;

	/**
	 * API key sent as a bearer token.
	 *
	 * @var string
	 */
	private $api_key;

	/**
	 * Request timeout in seconds.
	 *
	 * @var float
	 */
	private $timeout;

	/**
	 * Constructor.
	 *
	 * @param string $base_url Server base URL.
	 * @param string $api_key  API key.
	 * @param float  $timeout  Seconds before a request is abandoned.
	 */
	public function __construct( $base_url, $api_key, $timeout = 10 ) {
		$this->base_url = untrailingslashit( (string) $base_url );
		$this->api_key  = (string) $api_key;
		$this->timeout  = (float) $timeout;
	}

	/**
	 * A client configured from the plugin settings.
	 *
	 * @return DAP_Client
	 */
	public static function from_settings() {
		$timeout = (float) apply_filters( 'dap_client_timeout', 10 );
		return new self( DAP_Settings::server_url(), DAP_Settings::api_key(), $timeout );
	}

	/**
	 * `GET /healthz`.
	 *
	 * @return array|WP_Error `{status, body}`.
	 */
	public function health() {
		return $this->request( 'GET', '/healthz', array(), null, false );
	}

	/**
	 * `POST /api/v1/tasks`.
	 *
	 * @param int         $operation_code Operation (100, 200, …).
	 * @param array       $params         Operation parameters.
	 * @param string|null $runner_id      Optional target runner.
	 * @param bool        $queue          Queue instead of refusing when the runner is busy.
	 * @return array|WP_Error `{task_id, status, runner_id}`.
	 */
	public function create_task( $operation_code, array $params, $runner_id = null, $queue = false ) {
		$body = array(
			'operation_code' => (int) $operation_code,
			'params'         => (object) $params,
		);
		if ( null !== $runner_id && '' !== $runner_id ) {
			$body['runner_id'] = (string) $runner_id;
		}
		if ( $queue ) {
			$body['queue'] = true;
		}
		return $this->request( 'POST', '/api/v1/tasks', array(), $body );
	}

	/**
	 * `GET /api/v1/tasks`.
	 *
	 * @param array $args status, runner_id, limit, offset.
	 * @return array|WP_Error `{tasks, total, limit, offset}`.
	 */
	public function list_tasks( array $args = array() ) {
		$query = array_filter(
			array_intersect_key( $args, array_flip( array( 'status', 'runner_id', 'limit', 'offset' ) ) ),
			static function ( $v ) {
				return null !== $v && '' !== $v;
			}
		);
		return $this->request( 'GET', '/api/v1/tasks', $query );
	}

	/**
	 * `GET /api/v1/tasks/{id}`.
	 *
	 * @param string $task_id Task id.
	 * @return array|WP_Error
	 */
	public function get_task( $task_id ) {
		return $this->request( 'GET', '/api/v1/tasks/' . rawurlencode( $task_id ) );
	}

	/**
	 * `GET /api/v1/tasks/{id}/result`.
	 *
	 * @param string $task_id Task id.
	 * @return array|WP_Error `{result_data}`.
	 */
	public function get_result( $task_id ) {
		return $this->request( 'GET', '/api/v1/tasks/' . rawurlencode( $task_id ) . '/result' );
	}

	/**
	 * `POST /api/v1/tasks/{id}/cancel`.
	 *
	 * @param string $task_id Task id.
	 * @return array|WP_Error
	 */
	public function cancel_task( $task_id ) {
		return $this->request( 'POST', '/api/v1/tasks/' . rawurlencode( $task_id ) . '/cancel', array(), new stdClass() );
	}

	/**
	 * `GET /api/v1/tasks/{id}/artifacts`.
	 *
	 * @param string $task_id Task id.
	 * @return array|WP_Error
	 */
	public function list_artifacts( $task_id ) {
		return $this->request( 'GET', '/api/v1/tasks/' . rawurlencode( $task_id ) . '/artifacts' );
	}

	/**
	 * `POST /api/v1/tasks/{id}/artifacts/{name}/signed-url`: a key-less download link.
	 *
	 * @param string $task_id Task id.
	 * @param string $name    Artifact name.
	 * @param int    $ttl_s   Link lifetime.
	 * @return string|WP_Error Absolute URL.
	 */
	public function artifact_url( $task_id, $name, $ttl_s = 600 ) {
		$res = $this->request(
			'POST',
			'/api/v1/tasks/' . rawurlencode( $task_id ) . '/artifacts/' . rawurlencode( $name ) . '/signed-url',
			array( 'ttl_s' => (int) $ttl_s ),
			new stdClass()
		);
		if ( is_wp_error( $res ) ) {
			return $res;
		}
		$url = (string) ( $res['url'] ?? '' );
		return 0 === strpos( $url, '/' ) ? $this->base_url . $url : $url;
	}

	/**
	 * `GET /api/v1/tasks/{id}/artifacts/{name}` with the API key: the artifact's bytes.
	 *
	 * @param string $task_id   Task id.
	 * @param string $name      Artifact name.
	 * @param int    $max_bytes Refuse larger artifacts (`dap_artifact_too_large`).
	 * @return array|WP_Error `{body, content_type}`.
	 */
	public function get_artifact( $task_id, $name, $max_bytes = 20971520 ) {
		$res = $this->request( 'GET', '/api/v1/tasks/' . rawurlencode( $task_id ) . '/artifacts/' . rawurlencode( $name ), array(), null, false );
		if ( is_wp_error( $res ) ) {
			return $res;
		}
		if ( strlen( $res['body'] ) > $max_bytes ) {
			return new WP_Error( 'dap_artifact_too_large', __( 'The artifact is too large to show here; download it instead.', 'distributed-data-analysis' ), array( 'status' => 502 ) );
		}
		return array(
			'body'         => $res['body'],
			'content_type' => $res['content_type'],
		);
	}

	/**
	 * `GET /api/v1/runners`.
	 *
	 * @return array|WP_Error `{runners}`.
	 */
	public function list_runners() {
		return $this->request( 'GET', '/api/v1/runners' );
	}

	/**
	 * `GET /api/v1/datasets`.
	 *
	 * @return array|WP_Error `{datasets}`.
	 */
	public function list_datasets() {
		return $this->request( 'GET', '/api/v1/datasets' );
	}

	/**
	 * `POST /api/v1/sse-tickets`: a short-lived read-only ticket for the browser's EventSource.
	 *
	 * @param string|null $task_id Limit the ticket to one task.
	 * @return array|WP_Error `{ticket, expires_in}`.
	 */
	public function create_sse_ticket( $task_id = null ) {
		$body = $task_id ? array( 'task_id' => (string) $task_id ) : new stdClass();
		return $this->request( 'POST', '/api/v1/sse-tickets', array(), $body );
	}

	/**
	 * Perform one request and map the outcome.
	 *
	 * @param string     $method HTTP method.
	 * @param string     $path   Path below the base URL.
	 * @param array      $query  Query arguments.
	 * @param mixed|null $body   JSON body (null: none).
	 * @param bool       $json   Decode the response as JSON (false: return `{status, body, content_type}`).
	 * @return array|WP_Error
	 */
	public function request( $method, $path, array $query = array(), $body = null, $json = true ) {
		if ( '' === $this->base_url ) {
			return new WP_Error( 'dap_not_configured', __( 'The DAP server URL is not configured (Settings → Data Analysis).', 'distributed-data-analysis' ), array( 'status' => 503 ) );
		}
		$url = $this->base_url . $path;
		if ( $query ) {
			$url = add_query_arg( array_map( 'rawurlencode', array_map( 'strval', $query ) ), $url );
		}
		$headers = array( 'Accept' => 'application/json' );
		if ( '' !== $this->api_key ) {
			$headers['Authorization'] = 'Bearer ' . $this->api_key;
		}
		$args = array(
			'method'      => $method,
			'timeout'     => $this->timeout,
			'redirection' => 0,
			'headers'     => $headers,
			'user-agent'  => 'distributed-data-analysis/' . ( defined( 'DAP_PLUGIN_VERSION' ) ? DAP_PLUGIN_VERSION : 'dev' ) . '; WordPress/' . get_bloginfo( 'version' ),
		);
		if ( null !== $body ) {
			$args['headers']['Content-Type'] = 'application/json';
			$args['body']                    = wp_json_encode( $body );
		}

		$response = wp_remote_request( $url, $args );
		if ( is_wp_error( $response ) ) {
			return new WP_Error(
				'dap_unreachable',
				sprintf(
					/* translators: 1: server URL, 2: transport error */
					__( 'The DAP server at %1$s could not be reached: %2$s', 'distributed-data-analysis' ),
					$this->base_url,
					$response->get_error_message()
				),
				array(
					'status'    => 502,
					'transport' => $response->get_error_code(),
				)
			);
		}

		$status = (int) wp_remote_retrieve_response_code( $response );
		$raw    = (string) wp_remote_retrieve_body( $response );

		if ( $status >= 500 ) {
			return new WP_Error(
				'dap_server_error',
				sprintf(
					/* translators: %d: HTTP status */
					__( 'The DAP server failed with HTTP %d; see its logs.', 'distributed-data-analysis' ),
					$status
				),
				array( 'status' => $status )
			);
		}
		if ( $status >= 400 ) {
			$decoded = json_decode( $raw, true );
			if ( is_array( $decoded ) && isset( $decoded['error']['code'], $decoded['error']['message'] ) && is_string( $decoded['error']['code'] ) ) {
				$data = array( 'status' => $status );
				// dap-server puts an error's details next to code and message
				// (`{"error":{"code","message","runner_id","running_tasks"}}`); a nested
				// `details` object is accepted too.
				$details = isset( $decoded['error']['details'] ) && is_array( $decoded['error']['details'] )
					? $decoded['error']['details']
					: array_diff_key( $decoded['error'], array_flip( array( 'code', 'message' ) ) );
				if ( $details ) {
					$data['details'] = $details;
				}
				return new WP_Error( $decoded['error']['code'], (string) $decoded['error']['message'], $data );
			}
			return new WP_Error(
				'dap_http_error',
				sprintf(
					/* translators: %d: HTTP status */
					__( 'The DAP server answered HTTP %d.', 'distributed-data-analysis' ),
					$status
				),
				array( 'status' => $status )
			);
		}
		if ( $status < 200 || $status >= 300 ) {
			return new WP_Error( 'dap_http_error', __( 'Unexpected answer from the DAP server.', 'distributed-data-analysis' ), array( 'status' => $status ) );
		}

		if ( ! $json ) {
			return array(
				'status'       => $status,
				'body'         => $raw,
				'content_type' => (string) wp_remote_retrieve_header( $response, 'content-type' ),
			);
		}
		$decoded = json_decode( $raw, true );
		if ( ! is_array( $decoded ) ) {
			return new WP_Error( 'dap_invalid_response', __( 'The DAP server answered with something that is not JSON. Is the server URL right?', 'distributed-data-analysis' ), array( 'status' => 502 ) );
		}
		return $decoded;
	}
}
