<?php
/**
 * Role mapping on the settings page.
 *
 * @package DistributedDataAnalysis
 */

/**
 * DAP_Roles: the form, apply() with add_cap/remove_cap, and the admin-post handler's checks.
 */
class RolesTest extends DAP_Test_Case {

	protected function tearDown(): void {
		remove_all_filters( 'wp_redirect' );
		// Back to the activation mapping for the other tests.
		DAP_Capabilities::remove_all();
		DAP_Capabilities::activate();
		parent::tearDown();
	}

	private function caps_of( $role ) {
		$role = get_role( $role );
		return array_values( array_filter( DAP_Capabilities::all(), array( $role, 'has_cap' ) ) );
	}

	public function test_apply_sets_exactly_the_ticked_capabilities_and_administrator_keeps_all() {
		$held = DAP_Roles::apply(
			array(
				'administrator' => array(), // Unticking the administrator changes nothing.
				'editor'        => array( 'dap_view_results' => '1' ),
				'author'        => array(
					'dap_view_results' => '1',
					'dap_create_tasks' => '1',
					'edit_posts'       => '1', // Not ours: ignored.
					'manage_options'   => '1',
				),
				'no_such_role'  => array( 'dap_view_results' => '1' ),
			)
		);
		$this->assertSame( DAP_Capabilities::all(), $this->caps_of( 'administrator' ) );
		$this->assertSame( array( 'dap_view_results' ), $this->caps_of( 'editor' ) );
		$this->assertSame( array( 'dap_view_results', 'dap_create_tasks' ), $this->caps_of( 'author' ) );
		$this->assertSame( array(), $this->caps_of( 'subscriber' ) );
		$this->assertFalse( get_role( 'author' )->has_cap( 'manage_options' ) );
		$this->assertNull( get_role( 'no_such_role' ) );
		$this->assertArrayNotHasKey( 'no_such_role', $held );
		$this->assertSame( array( 'dap_view_results' ), $held['editor'] );
		// A user of the role sees the change at once.
		$editor = $this->login_as( 'editor' );
		$this->assertTrue( user_can( $editor, 'dap_view_results' ) );
		$this->assertFalse( user_can( $editor, 'dap_create_tasks' ) );
	}

	public function test_form_shows_the_current_mapping_with_a_nonce_and_a_locked_administrator_row() {
		$this->login_as( 'administrator' );
		$html = $this->capture_output( array( 'DAP_Roles', 'render_form' ) );
		$this->assertStringContainsString( 'value="dap_save_roles"', $html );
		$this->assertStringContainsString( 'value="' . wp_create_nonce( 'dap_save_roles' ) . '"', $html );
		$this->assertMatchesRegularExpression( '~name="roles\[editor\]\[dap_create_tasks\]" value="1" aria-label="[^"]*"\s+checked=\'checked\'\s+/>~', $html );
		$this->assertMatchesRegularExpression( '~name="roles\[editor\]\[dap_manage_settings\]" value="1" aria-label="[^"]*"\s+/>~', $html );
		$this->assertMatchesRegularExpression( '~name="roles\[administrator\]\[dap_manage_settings\]" value="1" aria-label="[^"]*"\s+checked=\'checked\'\s+disabled=\'disabled\'~', $html );
		$html = $this->capture_output( array( new DAP_Admin(), 'render_settings_page' ) );
		$this->assertStringContainsString( 'dap-roles-table', $html, 'the settings page holds the role form' );
	}

	private function save( array $post ) {
		$_POST    = array_merge( array( 'action' => 'dap_save_roles' ), $post );
		$_REQUEST = $_POST;
		add_filter(
			'wp_redirect',
			static function ( $location ) {
				throw new DAP_Test_Redirect( $location );
			}
		);
		try {
			$this->capture_output(
				static function () {
					do_action( 'admin_post_dap_save_roles' );
				}
			);
		} catch ( DAP_Test_Die $e ) {
			return $e;
		} catch ( DAP_Test_Redirect $e ) {
			return $e;
		}
		$this->fail( 'dap_save_roles neither refused nor redirected' );
	}

	public function test_handler_refuses_without_the_capability_or_the_nonce() {
		$posted = array( 'roles' => array( 'subscriber' => array( 'dap_manage_settings' => '1' ) ) );
		$this->login_as( 'editor' ); // View + create, not manage settings.
		$died = $this->save( array_merge( $posted, array( '_wpnonce' => wp_create_nonce( 'dap_save_roles' ) ) ) );
		$this->assertInstanceOf( DAP_Test_Die::class, $died );
		$this->assertSame( 403, $died->getCode() );
		$this->login_as( 'administrator' );
		$died = $this->save( array_merge( $posted, array( '_wpnonce' => wp_create_nonce( 'dap_create_task' ) ) ) );
		$this->assertInstanceOf( DAP_Test_Die::class, $died );
		$this->assertSame( 403, $died->getCode() );
		$this->assertSame( array(), $this->caps_of( 'subscriber' ), 'nothing changed' );
	}

	public function test_handler_applies_the_mapping_and_returns_to_the_settings_page() {
		$this->login_as( 'administrator' );
		$done = $this->save(
			array(
				'_wpnonce' => wp_create_nonce( 'dap_save_roles' ),
				'roles'    => array(
					'editor'     => array( 'dap_view_results' => '1', 'dap_create_tasks' => '1', 'dap_manage_settings' => '1' ),
					'subscriber' => array( 'dap_view_results' => '1' ),
				),
			)
		);
		$this->assertInstanceOf( DAP_Test_Redirect::class, $done );
		$this->assertStringContainsString( 'options-general.php?page=dap-settings', $done->getMessage() );
		$this->assertSame( DAP_Capabilities::all(), $this->caps_of( 'editor' ) );
		$this->assertSame( array( 'dap_view_results' ), $this->caps_of( 'subscriber' ) );
		$this->assertSame( array(), $this->caps_of( 'author' ), 'a role posted without boxes loses them' );
		$this->assertSame( DAP_Capabilities::all(), $this->caps_of( 'administrator' ) );
	}
}
