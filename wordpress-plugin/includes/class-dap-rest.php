<?php
/**
 * The plugin's REST routes under `dap/v1`.
 *
 * @package DistributedDataAnalysis
 */

defined( 'ABSPATH' ) || exit;

/**
 * `POST dap/v1/sse-ticket` (for the Tasks page's EventSource) and `POST dap/v1/webhook`.
 */
class DAP_Rest {

	const NAMESPACE = 'dap/v1';

	/**
	 * Webhook receiver.
	 *
	 * @var DAP_Webhook
	 */
	private $webhook;

	/**
	 * Constructor.
	 *
	 * @param DAP_Webhook $webhook Webhook receiver.
	 */
	public function __construct( DAP_Webhook $webhook ) {
		$this->webhook = $webhook;
	}

	/**
	 * Hooks.
	 */
	public function init() {
		add_action( 'rest_api_init', array( $this, 'register_routes' ) );
	}

	/**
	 * Register the routes.
	 */
	public function register_routes() {
		register_rest_route(
			self::NAMESPACE,
			'/sse-ticket',
			array(
				'methods'             => WP_REST_Server::CREATABLE,
				'callback'            => array( $this, 'sse_ticket' ),
				'permission_callback' => array( $this, 'can_view_results' ),
				'args'                => array(
					'task_id' => array(
						'type'              => 'string',
						'required'          => false,
						'sanitize_callback' => 'sanitize_text_field',
					),
				),
			)
		);
		register_rest_route(
			self::NAMESPACE,
			'/webhook',
			array(
				'methods'             => WP_REST_Server::CREATABLE,
				'callback'            => array( $this->webhook, 'handle' ),
				// Authenticated by the Standard Webhooks signature, not by a WordPress user.
				'permission_callback' => array( $this->webhook, 'authorize' ),
			)
		);
	}

	/**
	 * Permission: the capability plus a `wp_rest` nonce (X-WP-Nonce), checked here explicitly so
	 * the route refuses a request without one however it was authenticated.
	 *
	 * @param WP_REST_Request $request Request.
	 * @return true|WP_Error
	 */
	public function can_view_results( WP_REST_Request $request ) {
		$nonce = $request->get_header( 'x_wp_nonce' );
		if ( ! $nonce ) {
			$nonce = $request->get_param( '_wpnonce' );
		}
		if ( ! $nonce || ! wp_verify_nonce( $nonce, 'wp_rest' ) ) {
			return new WP_Error( 'rest_cookie_invalid_nonce', __( 'Cookie check failed: missing or invalid nonce.', 'distributed-data-analysis' ), array( 'status' => 403 ) );
		}
		if ( ! current_user_can( DAP_Capabilities::VIEW_RESULTS ) ) {
			return new WP_Error( 'rest_forbidden', __( 'You are not allowed to view Data Analysis results.', 'distributed-data-analysis' ), array( 'status' => rest_authorization_required_code() ) );
		}
		return true;
	}

	/**
	 * Mint a short-lived SSE ticket with the server-side API key; only the ticket reaches the page.
	 *
	 * @param WP_REST_Request $request Request.
	 * @return WP_REST_Response|WP_Error
	 */
	public function sse_ticket( WP_REST_Request $request ) {
		$task_id = $request->get_param( 'task_id' );
		$res     = DAP_Client::from_settings()->create_sse_ticket( $task_id ? $task_id : null );
		if ( is_wp_error( $res ) ) {
			// The browser talks to WordPress; whatever the DAP server said, it is a bad gateway here.
			return new WP_Error( $res->get_error_code(), $res->get_error_message(), array( 'status' => 502 ) );
		}
		return rest_ensure_response(
			array(
				'ticket'     => (string) ( $res['ticket'] ?? '' ),
				'expires_in' => (int) ( $res['expires_in'] ?? 0 ),
			)
		);
	}
}
