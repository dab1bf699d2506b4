<?php
/**
 * Shared helpers: users by role, settings, captured mail, wp_die turned into an exception.
 *
 * @package DistributedDataAnalysis
 */

use PHPUnit\Framework\TestCase;

/**
 * Thrown instead of dying so a test can see that a handler refused.
 */
class DAP_Test_Die extends Exception {
}

/**
 * Thrown by a wp_redirect filter so a test sees where a handler redirects.
 */
class DAP_Test_Redirect extends Exception {
}

/**
 * Base class for the plugin's tests (plain PHPUnit TestCase against a real WordPress).
 */
abstract class DAP_Test_Case extends TestCase {

	const API_KEY = 'dapk_SECRET_7c1e93';

	/**
	 * Mail captured through pre_wp_mail.
	 *
	 * @var array[]
	 */
	protected $mails = array();

	/**
	 * Prepare a known state.
	 */
	protected function setUp(): void {
		parent::setUp();
		$this->mails = array();
		add_filter( 'pre_wp_mail', array( $this, 'capture_mail' ), 10, 2 );
		add_filter( 'wp_die_handler', array( $this, 'die_handler' ) );
		add_filter( 'wp_die_ajax_handler', array( $this, 'die_handler' ) );
		add_filter( 'wp_die_json_handler', array( $this, 'die_handler' ) );
		$GLOBALS['wp_settings_errors'] = array();
		delete_option( DAP_Settings::OPTION );
		delete_option( DAP_Notices::OPTION );
		delete_option( DAP_Webhook::SEEN_OPTION );
		wp_set_current_user( 0 );
	}

	/**
	 * Undo the hooks and globals.
	 */
	protected function tearDown(): void {
		remove_filter( 'pre_wp_mail', array( $this, 'capture_mail' ), 10 );
		remove_filter( 'wp_die_handler', array( $this, 'die_handler' ) );
		remove_filter( 'wp_die_ajax_handler', array( $this, 'die_handler' ) );
		remove_filter( 'wp_die_json_handler', array( $this, 'die_handler' ) );
		remove_all_filters( 'wp_doing_ajax' );
		$_POST    = array();
		$_GET     = array();
		$_REQUEST = array();
		wp_set_current_user( 0 );
		parent::tearDown();
	}

	/**
	 * Pre_wp_mail: record instead of sending.
	 *
	 * @param null|bool $short_circuit Previous value.
	 * @param array     $atts          wp_mail arguments.
	 * @return bool
	 */
	public function capture_mail( $short_circuit, $atts ) {
		$this->mails[] = $atts;
		return true;
	}

	/**
	 * The wp_die handler used in tests.
	 *
	 * @return callable
	 */
	public function die_handler() {
		return static function ( $message, $title = '', $args = array() ) {
			// wp_die() accepts the status as $args['response'], as $args itself or as $title.
			if ( is_array( $args ) && isset( $args['response'] ) ) {
				$code = (int) $args['response'];
			} elseif ( is_int( $args ) ) {
				$code = $args;
			} elseif ( is_int( $title ) ) {
				$code = $title;
			} else {
				$code = 0;
			}
			if ( $message instanceof WP_Error ) {
				$message = $message->get_error_message();
			}
			throw new DAP_Test_Die( is_scalar( $message ) ? (string) $message : '', $code );
		};
	}

	/**
	 * Log in as the test user of a role (created by install-wordpress.php; admin is "admin").
	 *
	 * @param string $role administrator|editor|author|subscriber.
	 * @return WP_User
	 */
	protected function login_as( $role ) {
		$user = get_user_by( 'login', 'administrator' === $role ? 'admin' : $role . '1' );
		$this->assertInstanceOf( WP_User::class, $user, "test user for $role" );
		wp_set_current_user( $user->ID );
		return $user;
	}

	/**
	 * Store settings directly (bypassing the form) pointing at the fake server.
	 *
	 * @param array $overrides Values to change.
	 */
	protected function configure( array $overrides = array() ) {
		$settings = array_merge(
			DAP_Settings::defaults(),
			array(
				'server_url' => getenv( 'DAP_FAKE_SERVER' ),
				'api_key'    => self::API_KEY,
			),
			$overrides
		);
		// Store exactly these values: the form's sanitize callback (blank secret = keep) must not apply.
		$hook    = 'sanitize_option_' . DAP_Settings::OPTION;
		$removed = remove_filter( $hook, array( 'DAP_Settings', 'sanitize' ) );
		update_option( DAP_Settings::OPTION, $settings );
		if ( $removed ) {
			add_filter( $hook, array( 'DAP_Settings', 'sanitize' ), 10, 3 );
		}
	}

	/**
	 * Run a callable and return what it printed.
	 *
	 * @param callable $fn Code that echoes.
	 * @return string
	 */
	protected function capture_output( callable $fn ) {
		ob_start();
		try {
			$fn();
		} finally {
			$out = ob_get_clean();
		}
		return $out;
	}
}
