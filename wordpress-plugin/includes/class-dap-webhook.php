<?php
/**
 * Receiver for dap-server's signed webhooks (Standard Webhooks).
 *
 * @package DistributedDataAnalysis
 */

defined( 'ABSPATH' ) || exit;

/**
 * Verifies `webhook-id` / `webhook-timestamp` / `webhook-signature` (v1, HMAC-SHA256 over
 * "{id}.{timestamp}.{body}", base64), refuses stale timestamps and replayed ids, then turns
 * `task.completed` / `task.failed` into actions, an email and an admin notice.
 */
class DAP_Webhook {

	const SEEN_OPTION = 'dap_webhook_seen';
	const TOLERANCE   = 300;
	const REPLAY_TTL  = DAY_IN_SECONDS;

	/**
	 * REST permission callback: the request is authenticated by its signature, not by a user.
	 *
	 * @param WP_REST_Request $request Request.
	 * @return true|WP_Error
	 */
	public function authorize( WP_REST_Request $request ) {
		return $this->verify(
			(string) $request->get_header( 'webhook-id' ),
			(string) $request->get_header( 'webhook-timestamp' ),
			(string) $request->get_header( 'webhook-signature' ),
			(string) $request->get_body()
		);
	}

	/**
	 * Verify one delivery. On success the id is remembered so a replay is refused.
	 *
	 * @param string   $id        webhook-id header.
	 * @param string   $timestamp webhook-timestamp header (unix seconds).
	 * @param string   $signature webhook-signature header.
	 * @param string   $body      Raw body.
	 * @param int|null $now       Current time (for tests of the clock window).
	 * @return true|WP_Error
	 */
	public function verify( $id, $timestamp, $signature, $body, $now = null ) {
		$secret = DAP_Settings::webhook_secret();
		if ( '' === $secret ) {
			return new WP_Error( 'dap_webhook_not_configured', __( 'No webhook secret is configured.', 'distributed-data-analysis' ), array( 'status' => 503 ) );
		}
		if ( '' === $id || '' === $timestamp || '' === $signature ) {
			return new WP_Error( 'dap_webhook_missing_headers', __( 'webhook-id, webhook-timestamp and webhook-signature are required.', 'distributed-data-analysis' ), array( 'status' => 400 ) );
		}
		if ( ! ctype_digit( $timestamp ) ) {
			return new WP_Error( 'dap_webhook_bad_timestamp', __( 'webhook-timestamp must be unix seconds.', 'distributed-data-analysis' ), array( 'status' => 400 ) );
		}
		$now = null === $now ? time() : (int) $now;
		if ( abs( $now - (int) $timestamp ) > self::TOLERANCE ) {
			return new WP_Error( 'dap_webhook_stale', __( 'The webhook timestamp is too far from the current time.', 'distributed-data-analysis' ), array( 'status' => 401 ) );
		}

		$expected = base64_encode( hash_hmac( 'sha256', $id . '.' . $timestamp . '.' . $body, self::signing_key( $secret ), true ) ); // phpcs:ignore WordPress.PHP.DiscouragedPHPFunctions.obfuscation_base64_encode
		$valid    = false;
		foreach ( preg_split( '/\s+/', trim( $signature ) ) as $candidate ) {
			$parts = explode( ',', $candidate, 2 );
			if ( 2 === count( $parts ) && 'v1' === $parts[0] && hash_equals( $expected, $parts[1] ) ) {
				$valid = true;
				break;
			}
		}
		if ( ! $valid ) {
			return new WP_Error( 'dap_webhook_bad_signature', __( 'The webhook signature does not match.', 'distributed-data-analysis' ), array( 'status' => 401 ) );
		}

		// Only verified ids are remembered, so unauthenticated requests cannot fill the list.
		$seen = get_option( self::SEEN_OPTION, array() );
		$seen = is_array( $seen ) ? $seen : array();
		foreach ( $seen as $seen_id => $at ) {
			if ( $at < $now - self::REPLAY_TTL ) {
				unset( $seen[ $seen_id ] );
			}
		}
		if ( isset( $seen[ $id ] ) ) {
			return new WP_Error( 'dap_webhook_replayed', __( 'This webhook was already received.', 'distributed-data-analysis' ), array( 'status' => 409 ) );
		}
		$seen[ $id ] = $now;
		update_option( self::SEEN_OPTION, $seen, false );
		return true;
	}

	/**
	 * The HMAC key: `whsec_<base64>` secrets are decoded, others are used as given.
	 *
	 * @param string $secret Configured secret.
	 * @return string
	 */
	public static function signing_key( $secret ) {
		if ( 0 === strpos( $secret, 'whsec_' ) ) {
			$decoded = base64_decode( substr( $secret, 6 ), true ); // phpcs:ignore WordPress.PHP.DiscouragedPHPFunctions.obfuscation_base64_decode
			if ( false !== $decoded ) {
				return $decoded;
			}
		}
		return $secret;
	}

	/**
	 * REST callback for a verified delivery.
	 *
	 * @param WP_REST_Request $request Request.
	 * @return WP_REST_Response|WP_Error
	 */
	public function handle( WP_REST_Request $request ) {
		$payload = json_decode( (string) $request->get_body(), true );
		if ( ! is_array( $payload ) || ! isset( $payload['type'] ) || ! is_string( $payload['type'] ) ) {
			return new WP_Error( 'dap_webhook_bad_body', __( 'The webhook body must be JSON with a "type".', 'distributed-data-analysis' ), array( 'status' => 400 ) );
		}
		$task = isset( $payload['data'] ) && is_array( $payload['data'] ) ? $payload['data'] : array();

		switch ( $payload['type'] ) {
			case 'task.completed':
				$this->task_finished( 'completed', $task );
				break;
			case 'task.failed':
				$this->task_finished( 'failed', $task );
				break;
			default:
				return rest_ensure_response(
					array(
						'received' => true,
						'handled'  => false,
					)
				);
		}
		return rest_ensure_response(
			array(
				'received' => true,
				'handled'  => true,
			)
		);
	}

	/**
	 * Action, email and notice for a finished task.
	 *
	 * @param string $outcome completed|failed.
	 * @param array  $task    Task data from the webhook.
	 */
	private function task_finished( $outcome, array $task ) {
		$task_id = isset( $task['task_id'] ) ? sanitize_text_field( (string) $task['task_id'] ) : '';

		/**
		 * Fires when dap-server reports a task as completed (or failed, for `dap_task_failed`).
		 *
		 * @param array $task The `data` object of the webhook: task_id, status, …
		 */
		do_action( 'dap_task_' . $outcome, $task );

		if ( 'completed' === $outcome ) {
			/* translators: %s: task id */
			$message = sprintf( __( 'Data Analysis task %s completed.', 'distributed-data-analysis' ), $task_id );
			DAP_Notices::add( 'success', $message, $task_id );
		} else {
			$reason = '';
			if ( isset( $task['error']['message'] ) && is_string( $task['error']['message'] ) ) {
				$reason = ' ' . sanitize_text_field( $task['error']['message'] );
			}
			/* translators: %s: task id */
			$message = sprintf( __( 'Data Analysis task %s failed.', 'distributed-data-analysis' ), $task_id ) . $reason;
			DAP_Notices::add( 'error', $message, $task_id );
		}

		if ( DAP_Settings::get( 'notify_' . $outcome ) ) {
			$subject = sprintf( '[%1$s] %2$s', wp_specialchars_decode( get_bloginfo( 'name' ), ENT_QUOTES ), $message );
			$body    = $message . "\n\n" . DAP_Admin::result_url( $task_id ) . "\n";
			wp_mail( DAP_Settings::recipients(), $subject, $body );
		}
	}
}
