<?php
/**
 * Installs WordPress from the CLI (no browser), creates test users and activates the plugin.
 * Env: DAP_WP_DIR (site root), DAP_WP_URL (siteurl/home).
 *
 * @package DistributedDataAnalysis
 */

// phpcs:disable WordPress.WP.GlobalVariablesOverride.Prohibited
define( 'WP_INSTALLING', true );
$dir = getenv( 'DAP_WP_DIR' );
$url = getenv( 'DAP_WP_URL' );
if ( ! $dir || ! $url ) {
	fwrite( STDERR, "DAP_WP_DIR and DAP_WP_URL are required\n" );
	exit( 2 );
}
$_SERVER['HTTP_HOST']   = wp_parse_host_for_cli( $url );
$_SERVER['SERVER_NAME'] = '127.0.0.1';
$_SERVER['REQUEST_URI'] = '/';

/**
 * Host:port of a URL.
 *
 * @param string $url URL.
 * @return string
 */
function wp_parse_host_for_cli( $url ) {
	$p = parse_url( $url ); // phpcs:ignore WordPress.WP.AlternativeFunctions.parse_url_parse_url -- WordPress is not loaded yet.
	return $p['host'] . ( isset( $p['port'] ) ? ':' . $p['port'] : '' );
}

require $dir . '/wp-load.php';
require_once ABSPATH . 'wp-admin/includes/upgrade.php';
require_once ABSPATH . 'wp-admin/includes/plugin.php';

// No sendmail here: the "new site" email is dropped.
add_filter( 'pre_wp_mail', '__return_true' );
$result = wp_install( 'DAP test site', 'admin', 'admin@example.org', true, '', 'admin-password' );
if ( is_wp_error( $result ) ) {
	fwrite( STDERR, $result->get_error_message() . "\n" );
	exit( 1 );
}
update_option( 'siteurl', $url );
update_option( 'home', $url );
// Hermetic pages: no Gravatar requests from the browser test.
update_option( 'show_avatars', 0 );

foreach ( array( 'editor', 'author', 'subscriber' ) as $role ) {
	$id = wp_insert_user(
		array(
			'user_login' => $role . '1',
			'user_pass'  => $role . '-password',
			'user_email' => $role . '1@example.org',
			'role'       => $role,
		)
	);
	if ( is_wp_error( $id ) ) {
		fwrite( STDERR, $id->get_error_message() . "\n" );
		exit( 1 );
	}
}

$activated = activate_plugin( 'distributed-data-analysis/distributed-data-analysis.php' );
if ( is_wp_error( $activated ) ) {
	fwrite( STDERR, 'activation failed: ' . $activated->get_error_message() . "\n" );
	exit( 1 );
}
echo "WordPress installed at $url, plugin active\n";
