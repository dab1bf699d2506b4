<?php
/**
 * Points the plugin at a server (for the browser test). Env: DAP_WP_DIR, DAP_SERVER_URL, DAP_KEY.
 *
 * @package DistributedDataAnalysis
 */

$_SERVER['HTTP_HOST'] = '127.0.0.1';
require getenv( 'DAP_WP_DIR' ) . '/wp-load.php';
update_option(
	'dap_settings',
	array_merge(
		DAP_Settings::defaults(),
		array(
			'server_url' => getenv( 'DAP_SERVER_URL' ),
			'api_key'    => getenv( 'DAP_KEY' ),
		)
	)
);
echo 'plugin configured for ' . esc_url_raw( DAP_Settings::server_url() ) . "\n";
