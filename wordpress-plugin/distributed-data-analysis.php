<?php
/**
 * Plugin Name:       Distributed Data Analysis
 * Description:       Start analyses on DAP runners, watch their progress live and read their results from wp-admin.
 * Version:           0.1.0
 * Requires at least: 6.1
 * Requires PHP:      8.0
 * Author:            DAP
 * License:           GPL-2.0-or-later
 * Text Domain:       distributed-data-analysis
 *
 * @package DistributedDataAnalysis
 */

// This file only bootstraps: constants, class files and the hooks that must be registered here.
defined( 'ABSPATH' ) || exit;

define( 'DAP_PLUGIN_VERSION', '0.1.0' );
define( 'DAP_PLUGIN_FILE', __FILE__ );
define( 'DAP_PLUGIN_DIR', plugin_dir_path( __FILE__ ) );
define( 'DAP_PLUGIN_URL', plugin_dir_url( __FILE__ ) );

require_once DAP_PLUGIN_DIR . 'includes/class-dap-capabilities.php';
require_once DAP_PLUGIN_DIR . 'includes/class-dap-settings.php';
require_once DAP_PLUGIN_DIR . 'includes/class-dap-client.php';
require_once DAP_PLUGIN_DIR . 'includes/class-dap-notices.php';
require_once DAP_PLUGIN_DIR . 'includes/class-dap-webhook.php';
require_once DAP_PLUGIN_DIR . 'includes/class-dap-rest.php';
require_once DAP_PLUGIN_DIR . 'includes/class-dap-task-form.php';
require_once DAP_PLUGIN_DIR . 'includes/class-dap-new-task-page.php';
require_once DAP_PLUGIN_DIR . 'includes/class-dap-results.php';
require_once DAP_PLUGIN_DIR . 'includes/class-dap-roles.php';
require_once DAP_PLUGIN_DIR . 'includes/class-dap-admin.php';
require_once DAP_PLUGIN_DIR . 'includes/class-dap-plugin.php';

register_activation_hook( __FILE__, array( 'DAP_Capabilities', 'activate' ) );

DAP_Plugin::instance()->init();
