<?php
/**
 * Uninstall: remove the plugin's options, transients and capabilities.
 *
 * @package DistributedDataAnalysis
 */

defined( 'WP_UNINSTALL_PLUGIN' ) || exit;

require_once __DIR__ . '/includes/class-dap-capabilities.php';
require_once __DIR__ . '/includes/class-dap-settings.php';
require_once __DIR__ . '/includes/class-dap-notices.php';
require_once __DIR__ . '/includes/class-dap-webhook.php';

delete_option( DAP_Settings::OPTION );
delete_option( DAP_Notices::OPTION );
delete_option( DAP_Webhook::SEEN_OPTION );
DAP_Capabilities::remove_all();
