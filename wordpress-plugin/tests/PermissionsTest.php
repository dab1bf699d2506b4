<?php
/**
 * Capabilities on roles, and capability + nonce checks on every handler.
 *
 * @package DistributedDataAnalysis
 */

/**
 * The wrong user (or a missing nonce) is refused by the REST route, the AJAX handler and the
 * admin-post handlers; the right one gets through to the (fake) server.
 */
class PermissionsTest extends DAP_Test_Case {

	public function test_activation_granted_capabilities_by_role() {
		$admin = get_role( 'administrator' );
		$this->assertTrue( $admin->has_cap( 'dap_view_results' ) );
		$this->assertTrue( $admin->has_cap( 'dap_create_tasks' ) );
		$this->assertTrue( $admin->has_cap( 'dap_manage_settings' ) );
		$editor = get_role( 'editor' );
		$this->assertTrue( $editor->has_cap( 'dap_view_results' ) );
		$this->assertTrue( $editor->has_cap( 'dap_create_tasks' ) );
		$this->assertFalse( $editor->has_cap( 'dap_manage_settings' ) );
		foreach ( array( 'author', 'subscriber' ) as $role ) {
			foreach ( DAP_Capabilities::all() as $cap ) {
				$this->assertFalse( get_role( $role )->has_cap( $cap ), "$role has $cap" );
			}
		}
	}

	public function test_menu_is_registered_only_for_users_who_may_view_results() {
		global $menu, $submenu, $_wp_submenu_nopriv, $_registered_pages;
		$saved = array( $menu, $submenu, $_wp_submenu_nopriv, $_registered_pages );
		try {
			foreach ( array(
				'subscriber'    => false,
				'editor'        => true,
				'administrator' => true,
			) as $role => $visible ) {
				$menu    = array(); // phpcs:ignore WordPress.WP.GlobalVariablesOverride.Prohibited
				$submenu = array(); // phpcs:ignore WordPress.WP.GlobalVariablesOverride.Prohibited
				remove_all_actions( 'toplevel_page_dap-tasks' );
				$settings_hook = get_plugin_page_hookname( 'dap-settings', 'options-general.php' );
				remove_all_actions( $settings_hook );
				$this->login_as( $role );
				( new DAP_Admin() )->register_menu();
				$items = array_values( array_filter( (array) $menu, static function ( $item ) {
					return 'dap-tasks' === $item[2];
				} ) );
				$this->assertCount( 1, $items );
				// wp-admin/includes/menu.php drops items whose capability the user lacks, and
				// admin.php refuses a page whose callback was not hooked for this user.
				$this->assertSame( 'dap_view_results', $items[0][1] );
				$this->assertSame( $visible, current_user_can( $items[0][1] ), $role );
				$this->assertSame( $visible, (bool) has_action( 'toplevel_page_dap-tasks' ), $role );
				$this->assertSame( 'administrator' === $role, (bool) has_action( $settings_hook ), $role );
			}
		} finally {
			list( $menu, $submenu, $_wp_submenu_nopriv, $_registered_pages ) = $saved; // phpcs:ignore WordPress.WP.GlobalVariablesOverride.Prohibited
		}
	}

	private function ticket_request( $nonce ) {
		$request = new WP_REST_Request( 'POST', '/dap/v1/sse-ticket' );
		if ( null !== $nonce ) {
			$request->set_header( 'X-WP-Nonce', $nonce );
		}
		return rest_do_request( $request );
	}

	public function test_sse_ticket_refuses_subscriber_even_with_a_valid_nonce() {
		$this->configure();
		$this->login_as( 'subscriber' );
		$response = $this->ticket_request( wp_create_nonce( 'wp_rest' ) );
		$this->assertSame( 403, $response->get_status() );
		$this->assertSame( 'rest_forbidden', $response->get_data()['code'] );
	}

	public function test_sse_ticket_refuses_anonymous() {
		$this->configure();
		$response = $this->ticket_request( null );
		$this->assertContains( $response->get_status(), array( 401, 403 ) );
	}

	public function test_sse_ticket_refuses_admin_without_or_with_a_wrong_nonce() {
		$this->configure();
		$this->login_as( 'administrator' );
		$this->assertSame( 403, $this->ticket_request( null )->get_status() );
		$this->assertSame( 403, $this->ticket_request( 'abc123' )->get_status() );
		$this->assertSame( 403, $this->ticket_request( wp_create_nonce( 'some_other_action' ) )->get_status() );
	}

	public function test_sse_ticket_for_editor_with_nonce_is_minted_by_the_server_and_holds_no_key() {
		$this->configure();
		$this->login_as( 'editor' );
		$response = $this->ticket_request( wp_create_nonce( 'wp_rest' ) );
		$this->assertSame( 200, $response->get_status(), wp_json_encode( $response->get_data() ) );
		$data = $response->get_data();
		$this->assertStringStartsWith( 'tkt-', $data['ticket'] );
		$this->assertSame( 60, $data['expires_in'] );
		$this->assertStringNotContainsString( self::API_KEY, wp_json_encode( $data ) );
	}

	public function test_sse_ticket_reports_an_unreachable_server_as_bad_gateway() {
		$this->configure( array( 'server_url' => getenv( 'DAP_DEAD_SERVER' ) ) );
		$this->login_as( 'administrator' );
		$response = $this->ticket_request( wp_create_nonce( 'wp_rest' ) );
		$this->assertSame( 502, $response->get_status() );
		$this->assertSame( 'dap_unreachable', $response->get_data()['code'] );
	}

	/**
	 * Call the AJAX action like admin-ajax.php does; returns [die exception, output].
	 *
	 * @param string|null $nonce Nonce to send.
	 * @return array
	 */
	private function ajax_test_connection( $nonce ) {
		add_filter( 'wp_doing_ajax', '__return_true' );
		$_POST = array( 'action' => 'dap_test_connection' );
		if ( null !== $nonce ) {
			$_POST['nonce'] = $nonce;
		}
		$_REQUEST = $_POST;
		$died     = null;
		ob_start();
		try {
			do_action( 'wp_ajax_dap_test_connection' );
		} catch ( DAP_Test_Die $e ) {
			$died = $e;
		}
		$out = ob_get_clean();
		$this->assertNotNull( $died, 'an AJAX handler always ends in wp_die' );
		return array( $died, $out );
	}

	public function test_ajax_test_connection_refuses_missing_nonce() {
		$this->configure();
		$this->login_as( 'administrator' );
		list( $died, $out ) = $this->ajax_test_connection( null );
		$this->assertSame( '-1', $died->getMessage() );
		$this->assertSame( 403, $died->getCode() );
		$this->assertStringNotContainsString( 'checks', $out );
	}

	public function test_ajax_test_connection_refuses_editor_with_valid_nonce() {
		$this->configure();
		$this->login_as( 'editor' );
		list( , $out ) = $this->ajax_test_connection( wp_create_nonce( 'dap_test_connection' ) );
		$json           = json_decode( $out, true );
		$this->assertFalse( $json['success'] );
		$this->assertStringNotContainsString( 'checks', $out );
	}

	public function test_ajax_test_connection_for_admin_reports_both_checks() {
		$this->configure();
		$this->login_as( 'administrator' );
		list( , $out ) = $this->ajax_test_connection( wp_create_nonce( 'dap_test_connection' ) );
		$json           = json_decode( $out, true );
		$this->assertTrue( $json['success'], $out );
		$this->assertTrue( $json['data']['ok'], $out );
		$this->assertCount( 2, $json['data']['checks'] );
		$this->assertStringNotContainsString( self::API_KEY, $out );
	}

	public function test_test_connection_explains_a_wrong_key_and_a_dead_server() {
		$this->configure( array( 'api_key' => 'wrong' ) );
		$checks = DAP_Admin::test_connection();
		$this->assertTrue( $checks[0]['ok'] );
		$this->assertFalse( $checks[1]['ok'] );
		$this->assertStringContainsString( 'refused the API key', $checks[1]['message'] );

		$this->configure( array( 'server_url' => getenv( 'DAP_DEAD_SERVER' ) ) );
		$checks = DAP_Admin::test_connection();
		$this->assertCount( 1, $checks );
		$this->assertFalse( $checks[0]['ok'] );
		$this->assertStringContainsString( 'could not be reached', $checks[0]['message'] );
	}

	/**
	 * Call an admin-post handler; returns the wp_die exception (handlers that pass the checks
	 * would redirect and exit, which the tests never reach).
	 *
	 * @param string $action Action.
	 * @param array  $post   Form fields.
	 * @return DAP_Test_Die
	 */
	private function admin_post( $action, array $post ) {
		$_POST    = array_merge( array( 'action' => $action ), $post );
		$_REQUEST = $_POST;
		try {
			$this->capture_output(
				static function () use ( $action ) {
					do_action( 'admin_post_' . $action );
				}
			);
		} catch ( DAP_Test_Die $e ) {
			return $e;
		}
		$this->fail( "$action did not refuse" );
	}

	public function test_create_task_refuses_subscriber_even_with_nonce() {
		$this->configure();
		$this->login_as( 'subscriber' );
		$died = $this->admin_post( 'dap_create_task', array( '_wpnonce' => wp_create_nonce( 'dap_create_task' ), 'operation_code' => '100', 'dataset' => 'sales' ) );
		$this->assertSame( 403, $died->getCode() );
	}

	public function test_create_task_refuses_editor_without_valid_nonce() {
		$this->configure();
		$this->login_as( 'editor' );
		$died = $this->admin_post( 'dap_create_task', array( 'operation_code' => '100', 'dataset' => 'sales' ) );
		$this->assertSame( 403, $died->getCode() );
		$died = $this->admin_post( 'dap_create_task', array( '_wpnonce' => wp_create_nonce( 'dap_cancel_task_x' ), 'operation_code' => '100', 'dataset' => 'sales' ) );
		$this->assertSame( 403, $died->getCode() );
	}

	public function test_cancel_refuses_subscriber_and_a_nonce_for_another_task() {
		$this->configure();
		$this->login_as( 'subscriber' );
		$this->assertSame( 403, $this->admin_post( 'dap_cancel_task', array( 'task_id' => 't-running', '_wpnonce' => wp_create_nonce( 'dap_cancel_task_t-running' ) ) )->getCode() );
		$this->login_as( 'editor' );
		$this->assertSame( 403, $this->admin_post( 'dap_cancel_task', array( 'task_id' => 't-running', '_wpnonce' => wp_create_nonce( 'dap_cancel_task_t-other' ) ) )->getCode() );
	}

	public function test_retry_refuses_subscriber_and_a_nonce_for_another_task() {
		$this->configure();
		$this->login_as( 'subscriber' );
		$this->assertSame( 403, $this->admin_post( 'dap_retry_task', array( 'task_id' => 't-failed', '_wpnonce' => wp_create_nonce( 'dap_retry_task_t-failed' ) ) )->getCode() );
		$this->login_as( 'editor' );
		$this->assertSame( 403, $this->admin_post( 'dap_retry_task', array( 'task_id' => 't-failed', '_wpnonce' => wp_create_nonce( 'dap_cancel_task_t-failed' ) ) )->getCode() );
	}

	public function test_dismiss_notices_refuses_subscriber() {
		$this->login_as( 'subscriber' );
		$this->assertSame( 403, $this->admin_post( 'dap_dismiss_notices', array( '_wpnonce' => wp_create_nonce( 'dap_dismiss_notices' ) ) )->getCode() );
	}

	public function test_pages_refuse_users_without_the_capability() {
		$this->configure();
		$this->login_as( 'subscriber' );
		foreach ( array( 'render_tasks_page', 'render_runners_page', 'render_new_task_page' ) as $page ) {
			try {
				$this->capture_output( array( new DAP_Admin(), $page ) );
				$this->fail( "$page rendered for a subscriber" );
			} catch ( DAP_Test_Die $e ) {
				$this->assertSame( 403, $e->getCode(), $page );
			}
		}
	}
}
