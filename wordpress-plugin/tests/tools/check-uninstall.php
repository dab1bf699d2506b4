<?php
/**
 * After the tests: runs the plugin's uninstall.php through WordPress and checks that options and
 * capabilities are gone. Exit status 1 on failure. Env: DAP_WP_DIR.
 *
 * @package DistributedDataAnalysis
 */

$_SERVER['HTTP_HOST'] = '127.0.0.1';
require getenv( 'DAP_WP_DIR' ) . '/wp-load.php';
require_once ABSPATH . 'wp-admin/includes/plugin.php';

$plugin = 'distributed-data-analysis/distributed-data-analysis.php';
update_option( 'dap_settings', array( 'server_url' => 'http://127.0.0.1:1', 'api_key' => 'x' ) );
update_option( 'dap_notices', array( array( 'type' => 'info', 'message' => 'x', 'task_id' => '', 'time' => 1 ) ) );
if ( ! get_role( 'administrator' )->has_cap( 'dap_manage_settings' ) ) {
	fwrite( STDERR, "FAIL: administrator lacks dap_manage_settings before uninstall\n" );
	exit( 1 );
}
deactivate_plugins( $plugin, true );
uninstall_plugin( $plugin );
wp_cache_flush();

$failures = array();
foreach ( array( 'dap_settings', 'dap_notices', 'dap_webhook_seen' ) as $option ) {
	if ( false !== get_option( $option ) ) {
		$failures[] = "option $option still exists";
	}
}
// Re-read roles from the database, not the in-memory copy.
$roles = new WP_Roles();
foreach ( $roles->roles as $name => $role ) {
	foreach ( array( 'dap_view_results', 'dap_create_tasks', 'dap_manage_settings' ) as $cap ) {
		if ( ! empty( $role['capabilities'][ $cap ] ) ) {
			$failures[] = "role $name still has $cap";
		}
	}
}
if ( $failures ) {
	fwrite( STDERR, 'FAIL: ' . implode( '; ', $failures ) . "\n" );
	exit( 1 );
}
echo "uninstall removed options and capabilities\n";
