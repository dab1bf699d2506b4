<?php
/**
 * The plugin's custom capabilities and which roles receive them.
 *
 * @package DistributedDataAnalysis
 */

defined( 'ABSPATH' ) || exit;

/**
 * Adds the capabilities to roles on activation and removes them on uninstall.
 */
class DAP_Capabilities {

	const VIEW_RESULTS    = 'dap_view_results';
	const CREATE_TASKS    = 'dap_create_tasks';
	const MANAGE_SETTINGS = 'dap_manage_settings';

	/**
	 * Every capability the plugin defines.
	 *
	 * @return string[]
	 */
	public static function all() {
		return array( self::VIEW_RESULTS, self::CREATE_TASKS, self::MANAGE_SETTINGS );
	}

	/**
	 * Role => capabilities granted on activation. Sites change the mapping with the
	 * `dap_role_capabilities` filter (or later with any role editor).
	 *
	 * @return array<string, string[]>
	 */
	public static function role_map() {
		$map = array(
			'administrator' => self::all(),
			'editor'        => array( self::VIEW_RESULTS, self::CREATE_TASKS ),
		);
		return (array) apply_filters( 'dap_role_capabilities', $map );
	}

	/**
	 * Activation hook: grant the capabilities to the mapped roles.
	 */
	public static function activate() {
		foreach ( self::role_map() as $role_name => $caps ) {
			$role = get_role( $role_name );
			if ( ! $role ) {
				continue;
			}
			foreach ( (array) $caps as $cap ) {
				if ( in_array( $cap, self::all(), true ) ) {
					$role->add_cap( $cap );
				}
			}
		}
	}

	/**
	 * Uninstall: take the capabilities away from every role, whatever the mapping was.
	 */
	public static function remove_all() {
		$roles = wp_roles();
		foreach ( array_keys( $roles->roles ) as $role_name ) {
			$role = get_role( $role_name );
			if ( ! $role ) {
				continue;
			}
			foreach ( self::all() as $cap ) {
				$role->remove_cap( $cap );
			}
		}
	}
}
