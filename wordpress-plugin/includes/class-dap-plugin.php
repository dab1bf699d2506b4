<?php
/**
 * Wires the plugin's parts to WordPress.
 *
 * @package DistributedDataAnalysis
 */

defined( 'ABSPATH' ) || exit;

/**
 * The one object that creates the parts and registers their hooks.
 */
final class DAP_Plugin {

	/**
	 * Singleton.
	 *
	 * @var DAP_Plugin|null
	 */
	private static $instance = null;

	/**
	 * Whether init() ran.
	 *
	 * @var bool
	 */
	private $started = false;

	/**
	 * The instance.
	 *
	 * @return DAP_Plugin
	 */
	public static function instance() {
		if ( null === self::$instance ) {
			self::$instance = new self();
		}
		return self::$instance;
	}

	/**
	 * Register every hook once.
	 */
	public function init() {
		if ( $this->started ) {
			return;
		}
		$this->started = true;
		add_action( 'init', array( $this, 'load_textdomain' ) );
		( new DAP_Settings() )->init();
		( new DAP_Notices() )->init();
		( new DAP_Rest( new DAP_Webhook() ) )->init();
		// admin-post.php and admin-ajax.php need the handlers too; registering hooks is cheap.
		( new DAP_Admin() )->init();
		( new DAP_Results() )->init();
		( new DAP_Roles() )->init();
	}

	/**
	 * Translations.
	 */
	public function load_textdomain() {
		// Translations come from translate.wordpress.org (wp-content/languages/plugins).
		load_plugin_textdomain( 'distributed-data-analysis' );
	}
}
