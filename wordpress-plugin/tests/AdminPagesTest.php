<?php
/**
 * The admin pages rendered in-process against the fake server.
 *
 * @package DistributedDataAnalysis
 */

/**
 * Markup the live script relies on, escaping, and no API key anywhere in what the browser gets.
 */
class AdminPagesTest extends DAP_Test_Case {

	protected function setUp(): void {
		parent::setUp();
		$this->configure();
	}

	private function render( $method, array $get = array() ) {
		$_GET = $get;
		return $this->capture_output( array( new DAP_Admin(), $method ) );
	}

	public function test_tasks_page_rows_carry_live_hooks_and_cancel_only_for_unfinished() {
		$this->login_as( 'editor' );
		$html = $this->render( 'render_tasks_page' );
		$this->assertStringContainsString( 'data-task-id="t-running"', $html );
		$this->assertStringContainsString( 'aria-valuenow="42"', $html );
		$this->assertStringContainsString( 'data-dap-live-state', $html );
		$this->assertSame( 1, substr_count( $html, 'value="dap_cancel_task"' ), 'one cancel form (running task only)' );
		$this->assertSame( 1, substr_count( $html, 'value="dap_retry_task"' ), 'one retry form (failed task only)' );
		$this->assertStringContainsString( 'value="' . wp_create_nonce( 'dap_cancel_task_t-running' ) . '"', $html, 'cancel nonce is bound to the task' );
		$this->assertStringContainsString( 'value="' . wp_create_nonce( 'dap_retry_task_t-failed' ) . '"', $html, 'retry nonce is bound to the task' );
		$this->assertStringNotContainsString( self::API_KEY, $html );
	}

	public function test_status_filter_is_forwarded_and_unknown_status_ignored() {
		$this->login_as( 'editor' );
		$html = $this->render( 'render_tasks_page', array( 'status' => 'completed' ) );
		$this->assertStringContainsString( 'data-task-id="t-done"', $html );
		$this->assertStringNotContainsString( 'data-task-id="t-running"', $html );
		$html = $this->render( 'render_tasks_page', array( 'status' => '"><script>' ) );
		$this->assertStringContainsString( 'data-task-id="t-running"', $html );
		$this->assertStringNotContainsString( '<script>', $html );
	}

	public function test_tasks_page_shows_a_clear_error_when_the_server_is_down() {
		$this->configure( array( 'server_url' => getenv( 'DAP_DEAD_SERVER' ) ) );
		$this->login_as( 'editor' );
		$html = $this->render( 'render_tasks_page' );
		$this->assertStringContainsString( 'dap-error', $html );
		$this->assertStringContainsString( 'could not be reached', $html );
	}

	public function test_result_view_renders_escaped_table_and_artifact_link() {
		$this->login_as( 'editor' );
		$html = $this->render( 'render_tasks_page', array( 'task_id' => 't-done' ) );
		$this->assertStringContainsString( '<table class="widefat striped dap-result">', $html );
		$this->assertStringContainsString( '<th scope="col">region</th>', $html );
		$this->assertStringContainsString( '<td>120.5</td>', $html );
		$this->assertStringContainsString( '&lt;script&gt;x&lt;/script&gt;', $html );
		$this->assertStringNotContainsString( '<script>x</script>', $html );
		$this->assertStringContainsString( 'admin-post.php?action=dap_artifact&#038;task_id=t-done&#038;name=report.html&#038;_wpnonce=' . wp_create_nonce( 'dap_artifact_t-done' ), $html );
		$this->assertSame( 2, substr_count( $html, 'class="dap-chart-bar"' ), 'one bar per row' );
		$this->assertStringContainsString( 'width="400"', $html, 'the largest value spans the chart' );
		$this->assertStringContainsString( 'revenue by region', $html );
		$this->assertStringNotContainsString( self::API_KEY, $html );
	}

	public function test_result_table_is_paged() {
		$rows = array();
		for ( $i = 1; $i <= 120; $i++ ) {
			$rows[] = array( 'r' . $i, $i );
		}
		$data = array(
			'columns'   => array( 'name', 'n' ),
			'rows'      => $rows,
			'row_count' => 5000,
		);
		$html = $this->capture_output(
			static function () use ( $data ) {
				DAP_Admin::render_result_table( $data, 3 );
			}
		);
		$this->assertSame( 20, substr_count( $html, '<tr><td>' ), 'the last page holds rows 101–120' );
		$this->assertStringContainsString( '<td>r101</td>', $html );
		$this->assertStringNotContainsString( '<td>r100</td>', $html );
		$this->assertStringContainsString( 'rpage=2', $html );
		$this->assertStringContainsString( '120 of 5000 rows', $html );
	}

	public function test_new_task_form_offers_datasets_runners_and_a_nonce() {
		$this->login_as( 'editor' );
		$html = $this->render( 'render_new_task_page' );
		$this->assertStringContainsString( '<option value="sales" data-columns="' . esc_attr( '[{"name":"region","dtype":"str"},{"name":"revenue","dtype":"f64"}]' ) . '">', $html );
		// Column pickers are filled server-side for the first dataset; features offer numeric columns only.
		$this->assertStringContainsString( '<select name="features[]" id="dap-features" class="dap-column-picker" data-dap-columns="numeric" multiple size="5"><option value="revenue">revenue (f64)</option></select>', $html );
		$this->assertStringContainsString( '<option value="t-done" data-columns=', $html, 'completed tasks are offered as input' );
		foreach ( DAP_Task_Form::OPERATORS as $op ) {
			$this->assertStringContainsString( '<option value="' . $op . '">', $html );
		}
		$this->assertStringContainsString( 'value="r-busy"', $html );
		$this->assertStringContainsString( 'name="_wpnonce"', $html );
		$this->assertStringContainsString( 'value="dap_create_task"', $html );
		$this->assertStringNotContainsString( self::API_KEY, $html );
	}

	public function test_new_task_page_shows_the_refusal_after_redirect() {
		$this->login_as( 'editor' );
		DAP_Admin::flash( 'error', DAP_Admin::describe_error( new WP_Error( 'runner_busy', 'x', array( 'status' => 409, 'details' => array( 'runner_id' => 'r-busy', 'running_tasks' => array( 't-running' ) ) ) ) ) );
		$html = $this->render( 'render_new_task_page' );
		$this->assertStringContainsString( 'Runner laptop is busy with task t-running.', $html );
		$this->assertStringNotContainsString( 'busy with task', $this->render( 'render_new_task_page' ), 'shown once' );
	}

	public function test_retry_creates_the_same_task_again_and_refuses_unfinished_ones() {
		$res = DAP_Admin::retry_task( 't-failed' );
		$this->assertFalse( is_wp_error( $res ) );
		$this->assertSame(
			array(
				'operation_code' => 200,
				'params'         => array( 'dataset' => 'sales', 'limit' => 3 ),
				'runner_id'      => 'r-idle',
			),
			$res['received']
		);
		$this->assertSame( 'dap_not_retryable', DAP_Admin::retry_task( 't-done' )->get_error_code() );
	}

	public function test_runners_page() {
		$this->login_as( 'editor' );
		$html = $this->render( 'render_runners_page' );
		$this->assertStringContainsString( 'data-runner-id="r-busy"', $html );
		$this->assertStringContainsString( 'data-dap-runner-state>Busy<', $html );
		$this->assertStringContainsString( 'sales', $html );
	}

	public function test_localized_script_config_holds_no_key() {
		$this->login_as( 'editor' );
		$config = DAP_Admin::live_script_config();
		$this->assertSame( getenv( 'DAP_FAKE_SERVER' ), $config['serverUrl'] );
		$this->assertStringEndsWith( 'dap/v1/sse-ticket', $config['ticketUrl'] );
		$this->assertSame( 1, wp_verify_nonce( $config['restNonce'], 'wp_rest' ) );
		$this->assertStringNotContainsString( self::API_KEY, wp_json_encode( $config ) );
	}

	public function test_enqueued_script_output_on_tasks_page_holds_no_key() {
		$this->login_as( 'administrator' );
		global $menu, $submenu;
		$saved = array( $menu, $submenu );
		$admin = new DAP_Admin();
		$admin->register_menu();
		$admin->enqueue( 'toplevel_page_dap-tasks' );
		$this->assertTrue( wp_script_is( 'dap-live', 'enqueued' ) );
		$html = $this->capture_output(
			static function () {
				wp_print_scripts( array( 'dap-live' ) );
			}
		);
		list( $menu, $submenu ) = $saved; // phpcs:ignore WordPress.WP.GlobalVariablesOverride.Prohibited
		$this->assertStringContainsString( 'dapLive', $html );
		$this->assertStringContainsString( 'dap-live.js', $html );
		$this->assertStringNotContainsString( self::API_KEY, $html );
	}

	public function test_notices_are_shown_to_viewers_only() {
		DAP_Notices::add( 'success', 'Data Analysis task t-1 completed.', 't-1' );
		$notices = new DAP_Notices();
		$this->login_as( 'subscriber' );
		$this->assertSame( '', $this->capture_output( array( $notices, 'render' ) ) );
		$this->login_as( 'editor' );
		$html = $this->capture_output( array( $notices, 'render' ) );
		$this->assertStringContainsString( 'task t-1 completed', $html );
		$this->assertStringContainsString( 'dap_dismiss_notices', $html );
	}
}
