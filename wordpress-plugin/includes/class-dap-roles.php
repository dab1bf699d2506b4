<?php
/**
 * Role mapping on Settings → Data Analysis: which roles hold which of the plugin's capabilities.
 *
 * @package DistributedDataAnalysis
 */

defined( 'ABSPATH' ) || exit;

/**
 * Renders the role × capability checkboxes and applies a posted mapping with add_cap() /
 * remove_cap() (admin-post `dap_save_roles`, capability dap_manage_settings + nonce). The
 * administrator role always keeps every capability, whatever is posted. It touches only the
 * plugin's own capabilities, and only roles that exist.
 */
class DAP_Roles {

	const ACTION = 'dap_save_roles';

	/**
	 * Hooks.
	 */
	public function init() {
		add_action( 'admin_post_' . self::ACTION, array( $this, 'handle_save' ) );
	}

	/**
	 * Labels of the capabilities.
	 *
	 * @return array<string, string>
	 */
	public static function capability_labels() {
		return array(
			DAP_Capabilities::VIEW_RESULTS    => __( 'View results', 'distributed-data-analysis' ),
			DAP_Capabilities::CREATE_TASKS    => __( 'Create tasks', 'distributed-data-analysis' ),
			DAP_Capabilities::MANAGE_SETTINGS => __( 'Manage settings', 'distributed-data-analysis' ),
		);
	}

	/**
	 * The form (on the settings page, whose caller checked the capability).
	 */
	public static function render_form() {
		echo '<h2 id="dap-roles">' . esc_html__( 'Roles', 'distributed-data-analysis' ) . '</h2>';
		echo '<p class="description">' . esc_html__( 'Which roles may use Data Analysis. Administrators always hold every capability.', 'distributed-data-analysis' ) . '</p>';
		echo '<form method="post" action="' . esc_url( admin_url( 'admin-post.php' ) ) . '" class="dap-roles">';
		echo '<input type="hidden" name="action" value="' . esc_attr( self::ACTION ) . '" />';
		wp_nonce_field( self::ACTION );
		echo '<table class="widefat striped dap-roles-table"><thead><tr><th scope="col">' . esc_html__( 'Role', 'distributed-data-analysis' ) . '</th>';
		foreach ( self::capability_labels() as $cap => $label ) {
			printf( '<th scope="col">%1$s<br /><code>%2$s</code></th>', esc_html( $label ), esc_html( $cap ) );
		}
		echo '</tr></thead><tbody>';
		foreach ( wp_roles()->get_names() as $role_name => $display ) {
			$role  = get_role( $role_name );
			$admin = 'administrator' === $role_name;
			printf( '<tr data-role="%1$s"><th scope="row">%2$s</th>', esc_attr( $role_name ), esc_html( translate_user_role( $display ) ) );
			foreach ( array_keys( self::capability_labels() ) as $cap ) {
				printf(
					'<td><input type="checkbox" name="roles[%1$s][%2$s]" value="1" aria-label="%3$s" %4$s %5$s /></td>',
					esc_attr( $role_name ),
					esc_attr( $cap ),
					esc_attr( translate_user_role( $display ) . ': ' . $cap ),
					checked( $admin || ( $role && $role->has_cap( $cap ) ), true, false ),
					disabled( $admin, true, false )
				);
			}
			echo '</tr>';
		}
		echo '</tbody></table>';
		submit_button( __( 'Save roles', 'distributed-data-analysis' ), 'secondary', 'dap-save-roles' );
		echo '</form>';
	}

	/**
	 * Apply a posted mapping: every existing role gets exactly the ticked capabilities of the
	 * plugin (administrator: all of them).
	 *
	 * @param mixed $posted `roles[role][cap] = 1` (unslashed).
	 * @return array<string, string[]> Role => capabilities it now holds (of the plugin's).
	 */
	public static function apply( $posted ) {
		$posted = is_array( $posted ) ? $posted : array();
		$result = array();
		foreach ( array_keys( wp_roles()->get_names() ) as $role_name ) {
			$role = get_role( $role_name );
			if ( ! $role ) {
				continue;
			}
			$ticked = isset( $posted[ $role_name ] ) && is_array( $posted[ $role_name ] ) ? $posted[ $role_name ] : array();
			$held   = array();
			foreach ( DAP_Capabilities::all() as $cap ) {
				if ( 'administrator' === $role_name || ! empty( $ticked[ $cap ] ) ) {
					$role->add_cap( $cap );
					$held[] = $cap;
				} else {
					$role->remove_cap( $cap );
				}
			}
			$result[ $role_name ] = $held;
		}
		return $result;
	}

	/**
	 * Admin-post: save the mapping.
	 */
	public function handle_save() {
		if ( ! current_user_can( DAP_Capabilities::MANAGE_SETTINGS ) ) {
			wp_die( esc_html__( 'You are not allowed to manage Data Analysis settings.', 'distributed-data-analysis' ), '', array( 'response' => 403 ) );
		}
		check_admin_referer( self::ACTION );
		$posted = isset( $_POST['roles'] ) && is_array( $_POST['roles'] ) ? map_deep( wp_unslash( $_POST['roles'] ), 'sanitize_text_field' ) : array(); // phpcs:ignore WordPress.Security.ValidatedSanitizedInput.InputNotSanitized -- sanitised by map_deep.
		self::apply( $posted );
		add_settings_error( DAP_Settings::OPTION, 'dap_roles_saved', __( 'Roles saved.', 'distributed-data-analysis' ), 'success' );
		set_transient( 'settings_errors', get_settings_errors(), 30 );
		wp_safe_redirect( add_query_arg( 'settings-updated', 'true', admin_url( 'options-general.php?page=' . DAP_Settings::PAGE ) ) . '#dap-roles' );
		exit;
	}
}
