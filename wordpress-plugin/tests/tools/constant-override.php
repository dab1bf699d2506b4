<?php
/**
 * Loads WordPress with DAP_API_KEY defined (as wp-config.php would) and prints, as JSON, the
 * key the plugin uses and the HTML of the API key field. Used by SettingsTest.
 *
 * @package DistributedDataAnalysis
 */

define( 'DAP_API_KEY', 'dapk_FROM_CONSTANT_9' );
$_SERVER['HTTP_HOST'] = '127.0.0.1';
require getenv( 'DAP_WP_DIR' ) . '/wp-load.php';
require_once ABSPATH . 'wp-admin/includes/admin.php';
wp_set_current_user( 1 );
ob_start();
( new DAP_Settings() )->field_api_key();
$html = ob_get_clean();
echo wp_json_encode(
	array(
		'api_key' => DAP_Settings::api_key(),
		'html'    => $html,
	)
);
