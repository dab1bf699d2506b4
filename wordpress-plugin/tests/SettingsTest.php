<?php
/**
 * Settings sanitisation and secret handling.
 *
 * @package DistributedDataAnalysis
 */

/**
 * The Settings API callback through update_option(), as options.php would call it.
 */
class SettingsTest extends DAP_Test_Case {

	protected function setUp(): void {
		parent::setUp();
		( new DAP_Settings() )->register();
	}

	/**
	 * Save like the settings form does.
	 *
	 * @param array $input Form fields.
	 */
	private function submit( array $input ) {
		update_option( DAP_Settings::OPTION, $input );
	}

	private function error_codes() {
		return wp_list_pluck( get_settings_errors( DAP_Settings::OPTION ), 'code' );
	}

	public function test_valid_url_is_stored_without_trailing_slash() {
		$this->submit( array( 'server_url' => ' https://dap.example.com:8443/ ' ) );
		$this->assertSame( 'https://dap.example.com:8443', DAP_Settings::server_url() );
		$this->assertSame( array(), $this->error_codes() );
	}

	public function test_bad_urls_are_refused_and_previous_value_kept() {
		$this->submit( array( 'server_url' => 'http://127.0.0.1:8080' ) );
		foreach ( array( 'javascript:alert(1)', 'ftp://dap.example.com', 'not a url', '//dap.example.com', 'http://user:pw@dap.example.com' ) as $bad ) {
			$GLOBALS['wp_settings_errors'] = array();
			$this->submit( array( 'server_url' => $bad ) );
			$this->assertSame( 'http://127.0.0.1:8080', DAP_Settings::server_url(), $bad );
			$this->assertContains( 'dap_invalid_server_url', $this->error_codes(), $bad );
		}
	}

	public function test_blank_api_key_keeps_the_stored_one_and_new_one_replaces_it() {
		$this->submit( array( 'api_key' => 'first-key' ) );
		$this->assertSame( 'first-key', DAP_Settings::api_key() );
		$this->submit( array( 'api_key' => '' ) );
		$this->assertSame( 'first-key', DAP_Settings::api_key(), 'masked field left blank keeps the key' );
		$this->submit( array() );
		$this->assertSame( 'first-key', DAP_Settings::api_key(), 'field absent keeps the key' );
		$this->submit( array( 'api_key' => 'second-key' ) );
		$this->assertSame( 'second-key', DAP_Settings::api_key() );
		$this->submit( array( 'api_key_clear' => '1' ) );
		$this->assertSame( '', DAP_Settings::api_key() );
	}

	public function test_secret_with_spaces_is_refused() {
		$this->submit( array( 'webhook_secret' => 'whsec_abc' ) );
		$this->submit( array( 'webhook_secret' => 'has space' ) );
		$this->assertSame( 'whsec_abc', DAP_Settings::webhook_secret() );
		$this->assertContains( 'dap_invalid_webhook_secret', $this->error_codes() );
	}

	public function test_recipients_keep_valid_emails_and_report_invalid_ones() {
		$this->submit( array( 'recipients' => "ops@example.org, bad@, dev@example.org;\n<script>@x.org ops@example.org" ) );
		$this->assertSame( 'ops@example.org,dev@example.org', DAP_Settings::get( 'recipients' ) );
		$this->assertSame( array( 'ops@example.org', 'dev@example.org' ), DAP_Settings::recipients() );
		$this->assertContains( 'dap_invalid_recipients', $this->error_codes() );
	}

	public function test_no_recipients_falls_back_to_admin_email() {
		$this->submit( array( 'recipients' => '' ) );
		$this->assertSame( array( get_option( 'admin_email' ) ), DAP_Settings::recipients() );
	}

	public function test_checkboxes_and_unknown_keys() {
		$this->submit(
			array(
				'notify_completed' => '1',
				'evil'             => 'x',
			)
		);
		$all = get_option( DAP_Settings::OPTION );
		$this->assertTrue( $all['notify_completed'] );
		$this->assertFalse( $all['notify_failed'] );
		$this->assertArrayNotHasKey( 'evil', $all );
	}

	public function test_settings_page_never_prints_the_secrets() {
		$this->login_as( 'administrator' );
		$this->submit(
			array(
				'server_url'     => 'http://127.0.0.1:9',
				'api_key'        => 'dapk_PRINTED_NEVER_1',
				'webhook_secret' => 'whsec_UFJJTlRFRF9ORVZFUl8y',
			)
		);
		$html = $this->capture_output( array( new DAP_Admin(), 'render_settings_page' ) );
		$this->assertStringContainsString( 'name="dap_settings[api_key]"', $html );
		$this->assertStringContainsString( 'stored', $html, 'the form says a key is stored' );
		$this->assertStringNotContainsString( 'dapk_PRINTED_NEVER_1', $html );
		$this->assertStringNotContainsString( 'UFJJTlRFRF9ORVZFUl8y', $html );
		$this->assertStringNotContainsString( 'dapk_PRINTED_NEVER_1', wp_json_encode( DAP_Admin::settings_script_config() ) );
	}

	public function test_settings_page_refuses_a_user_without_the_capability() {
		$this->login_as( 'editor' );
		$this->expectException( DAP_Test_Die::class );
		$this->capture_output( array( new DAP_Admin(), 'render_settings_page' ) );
	}

	public function test_options_php_is_guarded_by_the_plugin_capability() {
		$this->assertSame( 'dap_manage_settings', apply_filters( 'option_page_capability_' . DAP_Settings::GROUP, 'manage_options' ) );
	}

	public function test_constant_overrides_stored_api_key_and_is_not_printed() {
		$script = __DIR__ . '/tools/constant-override.php';
		$out    = array();
		exec( escapeshellarg( PHP_BINARY ) . ' ' . escapeshellarg( $script ) . ' 2>&1', $out, $rc );
		$this->assertSame( 0, $rc, implode( "\n", $out ) );
		$result = json_decode( implode( "\n", $out ), true );
		$this->assertIsArray( $result, implode( "\n", $out ) );
		$this->assertSame( 'dapk_FROM_CONSTANT_9', $result['api_key'] );
		$this->assertStringContainsString( 'wp-config.php', $result['html'] );
		$this->assertStringNotContainsString( 'dapk_FROM_CONSTANT_9', $result['html'] );
	}
}
