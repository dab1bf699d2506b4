<?php
/**
 * Admin notices about finished tasks (written by the webhook receiver).
 *
 * @package DistributedDataAnalysis
 */

defined( 'ABSPATH' ) || exit;

/**
 * A short list of notices kept in an option and shown to users who may view results until one
 * of them dismisses it.
 */
class DAP_Notices {

	const OPTION = 'dap_notices';
	const MAX    = 20;

	/**
	 * Hooks.
	 */
	public function init() {
		add_action( 'admin_notices', array( $this, 'render' ) );
		add_action( 'admin_post_dap_dismiss_notices', array( $this, 'handle_dismiss' ) );
	}

	/**
	 * Store a notice.
	 *
	 * @param string $type    success|error|warning|info.
	 * @param string $message Plain text.
	 * @param string $task_id Task the notice is about.
	 */
	public static function add( $type, $message, $task_id = '' ) {
		$notices   = self::all();
		$notices[] = array(
			'type'    => in_array( $type, array( 'success', 'error', 'warning', 'info' ), true ) ? $type : 'info',
			'message' => (string) $message,
			'task_id' => (string) $task_id,
			'time'    => time(),
		);
		update_option( self::OPTION, array_slice( $notices, -self::MAX ), false );
	}

	/**
	 * Stored notices.
	 *
	 * @return array[]
	 */
	public static function all() {
		$notices = get_option( self::OPTION, array() );
		return is_array( $notices ) ? $notices : array();
	}

	/**
	 * Print the notices.
	 */
	public function render() {
		if ( ! current_user_can( DAP_Capabilities::VIEW_RESULTS ) ) {
			return;
		}
		$notices = self::all();
		if ( ! $notices ) {
			return;
		}
		foreach ( $notices as $notice ) {
			$link = '';
			if ( '' !== $notice['task_id'] ) {
				$link = sprintf(
					' <a href="%1$s">%2$s</a>',
					esc_url( DAP_Admin::result_url( $notice['task_id'] ) ),
					esc_html__( 'View', 'distributed-data-analysis' )
				);
			}
			printf(
				'<div class="notice notice-%1$s"><p>%2$s%3$s</p></div>',
				esc_attr( $notice['type'] ),
				esc_html( $notice['message'] ),
				$link // phpcs:ignore WordPress.Security.EscapeOutput.OutputNotEscaped -- escaped above.
			);
		}
		printf(
			'<form method="post" action="%1$s" class="dap-dismiss"><input type="hidden" name="action" value="dap_dismiss_notices" />%2$s<button class="button-link">%3$s</button></form>',
			esc_url( admin_url( 'admin-post.php' ) ),
			wp_nonce_field( 'dap_dismiss_notices', '_wpnonce', true, false ), // phpcs:ignore WordPress.Security.EscapeOutput.OutputNotEscaped
			esc_html__( 'Dismiss Data Analysis notices', 'distributed-data-analysis' )
		);
	}

	/**
	 * admin-post: clear the notices.
	 */
	public function handle_dismiss() {
		if ( ! current_user_can( DAP_Capabilities::VIEW_RESULTS ) ) {
			wp_die( esc_html__( 'You are not allowed to do that.', 'distributed-data-analysis' ), 403 );
		}
		check_admin_referer( 'dap_dismiss_notices' );
		delete_option( self::OPTION );
		wp_safe_redirect( wp_get_referer() ? wp_get_referer() : admin_url() );
		exit;
	}
}
