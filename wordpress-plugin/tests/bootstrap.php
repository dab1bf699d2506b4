<?php
/**
 * PHPUnit bootstrap: loads the real WordPress installed by scripts/test-wordpress.sh (DAP_WP_DIR),
 * with the plugin active, plus the admin API the plugin's pages use.
 *
 * @package DistributedDataAnalysis
 */

$dap_wp_dir = getenv( 'DAP_WP_DIR' );
if ( ! $dap_wp_dir || ! is_file( $dap_wp_dir . '/wp-load.php' ) ) {
	fwrite( STDERR, "Run these tests through scripts/test-wordpress.sh (DAP_WP_DIR must point at a WordPress).\n" );
	exit( 2 );
}
$_SERVER['HTTP_HOST']   = '127.0.0.1';
$_SERVER['SERVER_NAME'] = '127.0.0.1';
$_SERVER['REQUEST_URI'] = '/';

require $dap_wp_dir . '/wp-load.php';
require_once ABSPATH . 'wp-admin/includes/admin.php';

// Every notice and warning from the plugin fails a test (PHPUnit converts them); only the
// deprecations that Debian's WordPress 6.1 itself raises under PHP 8.2 are left out.
error_reporting( E_ALL & ~E_DEPRECATED ); // phpcs:ignore WordPress.PHP.DevelopmentFunctions.prevent_path_disclosure_error_reporting
ini_set( 'display_errors', '1' ); // phpcs:ignore WordPress.PHP.IniSet.display_errors_Disallowed

if ( ! class_exists( 'DAP_Plugin' ) ) {
	fwrite( STDERR, "The plugin is not active in that WordPress.\n" );
	exit( 2 );
}

require __DIR__ . '/class-dap-test-case.php';
