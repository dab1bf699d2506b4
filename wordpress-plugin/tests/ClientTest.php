<?php
/**
 * DAP_Client against a real HTTP server (tools/fake-dap-server.php under `php -S`).
 *
 * @package DistributedDataAnalysis
 */

/**
 * Success, typed 4xx, 5xx, timeout and connection refused.
 */
class ClientTest extends DAP_Test_Case {

	private function client( $timeout = 5, $key = self::API_KEY ) {
		return new DAP_Client( getenv( 'DAP_FAKE_SERVER' ), $key, $timeout );
	}

	public function test_create_task_sends_json_with_the_bearer_key() {
		$res = $this->client()->create_task( 100, array( 'dataset' => 'sales', 'limit' => 5 ), 'r-idle' );
		$this->assertNotWPError( $res );
		$this->assertSame( 't-new', $res['task_id'] );
		$this->assertSame(
			array(
				'operation_code' => 100,
				'params'         => array( 'dataset' => 'sales', 'limit' => 5 ),
				'runner_id'      => 'r-idle',
			),
			$res['received']
		);
	}

	public function test_409_typed_body_becomes_wp_error_with_code_message_status_details() {
		$res = $this->client()->create_task( 100, array( 'dataset' => 'sales' ), 'r-busy' );
		$this->assertInstanceOf( WP_Error::class, $res );
		$this->assertSame( 'runner_busy', $res->get_error_code() );
		$this->assertStringContainsString( 'is busy with task t-running', $res->get_error_message() );
		$data = $res->get_error_data();
		$this->assertSame( 409, $data['status'] );
		$this->assertSame( array( 't-running' ), $data['details']['running_tasks'] );
	}

	public function test_runner_busy_is_explained_with_the_runner_name_and_task() {
		$this->configure();
		$res = ( new DAP_Admin() )->create_task_from_input(
			array(
				'operation_code' => '100',
				'dataset'        => 'sales',
				'runner_id'      => 'r-busy',
			)
		);
		$this->assertInstanceOf( WP_Error::class, $res );
		$this->assertStringStartsWith( 'Runner laptop is busy with task t-running.', DAP_Admin::describe_error( $res ) );
	}

	public function test_runner_draining_is_explained_with_the_runner_name() {
		$this->configure();
		$error = new WP_Error(
			'runner_draining',
			'runner laptop (r-busy) is shutting down',
			array(
				'status'  => 409,
				'details' => array(
					'runner_id'     => 'r-busy',
					'running_tasks' => array( 't-running' ),
				),
			)
		);
		$this->assertStringStartsWith( 'Runner laptop is shutting down', DAP_Admin::describe_error( $error ) );
	}

	public function test_queue_flag_is_passed_through() {
		$res = $this->client()->create_task( 100, array( 'dataset' => 'sales' ), 'r-busy', true );
		$this->assertNotWPError( $res );
		$this->assertTrue( $res['received']['queue'] );
	}

	public function test_422_and_401_typed_bodies() {
		$res = $this->client()->create_task( 999, array( 'dataset' => 'sales' ) );
		$this->assertSame( 'unknown_operation', $res->get_error_code() );
		$this->assertSame( 422, $res->get_error_data()['status'] );

		$res = $this->client( 5, 'wrong-key' )->list_tasks();
		$this->assertSame( 'unauthorized', $res->get_error_code() );
		$this->assertSame( 401, $res->get_error_data()['status'] );
	}

	public function test_4xx_without_typed_body_is_a_generic_http_error() {
		$res = $this->client()->get_task( 'plain' );
		$this->assertSame( 'dap_http_error', $res->get_error_code() );
		$this->assertSame( 404, $res->get_error_data()['status'] );
	}

	public function test_5xx_becomes_dap_server_error() {
		$res = $this->client()->get_task( 'boom' );
		$this->assertSame( 'dap_server_error', $res->get_error_code() );
		$this->assertSame( 500, $res->get_error_data()['status'] );
	}

	public function test_non_json_success_is_an_invalid_response() {
		$this->assertSame( 'dap_invalid_response', $this->client()->get_task( 'notjson' )->get_error_code() );
	}

	public function test_timeout_becomes_dap_unreachable_quickly() {
		$started = microtime( true );
		$res     = $this->client( 1 )->get_task( 'slow' );
		$elapsed = microtime( true ) - $started;
		$this->assertInstanceOf( WP_Error::class, $res );
		$this->assertSame( 'dap_unreachable', $res->get_error_code() );
		$this->assertLessThan( 2.5, $elapsed, 'the timeout was honoured' );
	}

	public function test_connection_refused_becomes_dap_unreachable() {
		$res = ( new DAP_Client( getenv( 'DAP_DEAD_SERVER' ), self::API_KEY, 2 ) )->list_runners();
		$this->assertSame( 'dap_unreachable', $res->get_error_code() );
		$this->assertStringContainsString( getenv( 'DAP_DEAD_SERVER' ), $res->get_error_message() );
	}

	public function test_not_configured() {
		$res = ( new DAP_Client( '', '' ) )->list_tasks();
		$this->assertSame( 'dap_not_configured', $res->get_error_code() );
	}

	public function test_list_tasks_passes_filters_and_paging() {
		$res = $this->client()->list_tasks(
			array(
				'status' => 'running',
				'limit'  => 20,
				'offset' => 40,
				'bogus'  => 'x',
			)
		);
		$this->assertNotWPError( $res );
		$this->assertSame( array( 'status' => 'running', 'limit' => '20', 'offset' => '40' ), $res['query'] );
		$this->assertSame( array( 't-running' ), wp_list_pluck( $res['tasks'], 'task_id' ) );
	}

	public function test_other_endpoints() {
		$c = $this->client();
		$this->assertSame( 'ok', $c->health()['body'] );
		$this->assertSame( 'completed', $c->get_task( 't-done' )['status'] );
		$this->assertSame( array( 'region', 'revenue' ), $c->get_result( 't-done' )['result_data']['columns'] );
		$this->assertSame( 'task_finished', $c->cancel_task( 't-done' )->get_error_code() );
		$this->assertCount( 2, $c->list_runners()['runners'] );
		$this->assertSame( 'sales', $c->list_datasets()['datasets'][0]['name'] );
		$this->assertStringStartsWith( 'tkt-', $c->create_sse_ticket( 't-done' )['ticket'] );
		$this->assertSame( getenv( 'DAP_FAKE_SERVER' ) . '/api/v1/tasks/t-done/artifacts/report.html?token=signed', $c->artifact_url( 't-done', 'report.html' ) );
	}

	private function assertNotWPError( $value ) {
		$this->assertFalse( is_wp_error( $value ), is_wp_error( $value ) ? $value->get_error_code() . ': ' . $value->get_error_message() : '' );
	}
}
