<?php
/**
 * Standard Webhooks verification through the real REST route.
 *
 * @package DistributedDataAnalysis
 */

/**
 * Signed requests built here, dispatched with rest_do_request().
 */
class WebhookTest extends DAP_Test_Case {

	const SECRET_BYTES = 'a-32-byte-secret-for-hmac-sha256';

	/**
	 * Actions seen.
	 *
	 * @var array
	 */
	private $fired = array();

	protected function setUp(): void {
		parent::setUp();
		$this->fired = array();
		$this->configure(
			array(
				'webhook_secret'   => 'whsec_' . base64_encode( self::SECRET_BYTES ),
				'notify_completed' => true,
				'notify_failed'    => true,
				'recipients'       => 'ops@example.org,dev@example.org',
			)
		);
		add_action( 'dap_task_completed', array( $this, 'on_completed' ) );
		add_action( 'dap_task_failed', array( $this, 'on_failed' ) );
	}

	protected function tearDown(): void {
		remove_action( 'dap_task_completed', array( $this, 'on_completed' ) );
		remove_action( 'dap_task_failed', array( $this, 'on_failed' ) );
		parent::tearDown();
	}

	public function on_completed( $task ) {
		$this->fired[] = array( 'completed', $task );
	}

	public function on_failed( $task ) {
		$this->fired[] = array( 'failed', $task );
	}

	/**
	 * A delivery signed with $key.
	 *
	 * @param array       $payload   Body.
	 * @param string|null $id        webhook-id.
	 * @param int|null    $timestamp webhook-timestamp.
	 * @param string|null $key       HMAC key (raw bytes).
	 * @param string|null $signature Override the whole signature header.
	 * @return WP_REST_Response
	 */
	private function deliver( array $payload, $id = null, $timestamp = null, $key = null, $signature = null ) {
		$id        = $id ?? 'msg_' . wp_generate_password( 12, false );
		$timestamp = $timestamp ?? time();
		$body      = wp_json_encode( $payload );
		if ( null === $signature ) {
			$signature = 'v1,' . base64_encode( hash_hmac( 'sha256', "$id.$timestamp.$body", $key ?? self::SECRET_BYTES, true ) );
		}
		$request = new WP_REST_Request( 'POST', '/dap/v1/webhook' );
		$request->set_header( 'content-type', 'application/json' );
		$request->set_header( 'webhook-id', $id );
		$request->set_header( 'webhook-timestamp', (string) $timestamp );
		$request->set_header( 'webhook-signature', $signature );
		$request->set_body( $body );
		return rest_do_request( $request );
	}

	private function completed( $task_id = 't-1' ) {
		return array(
			'type' => 'task.completed',
			'data' => array(
				'task_id'        => $task_id,
				'status'         => 'completed',
				'operation_code' => 100,
			),
		);
	}

	public function test_good_signature_fires_action_sends_mail_and_stores_notice() {
		$response = $this->deliver( $this->completed( 't-good' ) );
		$this->assertSame( 200, $response->get_status(), wp_json_encode( $response->get_data() ) );
		$this->assertSame( array( 'received' => true, 'handled' => true ), $response->get_data() );

		$this->assertCount( 1, $this->fired );
		$this->assertSame( 'completed', $this->fired[0][0] );
		$this->assertSame( 't-good', $this->fired[0][1]['task_id'] );
		$this->assertSame( 'completed', $this->fired[0][1]['status'] );

		$this->assertCount( 1, $this->mails );
		$this->assertSame( array( 'ops@example.org', 'dev@example.org' ), $this->mails[0]['to'] );
		$this->assertStringContainsString( 't-good', $this->mails[0]['subject'] );
		$this->assertStringContainsString( 'completed', $this->mails[0]['subject'] );

		$notices = DAP_Notices::all();
		$this->assertCount( 1, $notices );
		$this->assertSame( 'success', $notices[0]['type'] );
		$this->assertSame( 't-good', $notices[0]['task_id'] );
	}

	public function test_failed_task_fires_failed_action_and_mail_mentions_the_error() {
		$payload  = array(
			'type' => 'task.failed',
			'data' => array(
				'task_id' => 't-bad',
				'status'  => 'failed',
				'error'   => array(
					'code'    => 'invalid_params',
					'message' => 'params.where.op is unknown',
				),
			),
		);
		$response = $this->deliver( $payload );
		$this->assertSame( 200, $response->get_status() );
		$this->assertSame( 'failed', $this->fired[0][0] );
		$this->assertCount( 1, $this->mails );
		$this->assertStringContainsString( 'params.where.op is unknown', $this->mails[0]['subject'] );
		$this->assertSame( 'error', DAP_Notices::all()[0]['type'] );
	}

	public function test_notification_email_is_optional() {
		$this->configure(
			array(
				'webhook_secret'   => 'whsec_' . base64_encode( self::SECRET_BYTES ),
				'notify_completed' => false,
			)
		);
		$this->assertSame( 200, $this->deliver( $this->completed() )->get_status() );
		$this->assertCount( 1, $this->fired );
		$this->assertCount( 0, $this->mails );
	}

	public function test_one_valid_signature_among_several_is_accepted() {
		$id    = 'msg_multi';
		$ts    = time();
		$body  = wp_json_encode( $this->completed() );
		$good  = base64_encode( hash_hmac( 'sha256', "$id.$ts.$body", self::SECRET_BYTES, true ) );
		$other = base64_encode( hash_hmac( 'sha256', "$id.$ts.$body", 'old-secret', true ) );
		$this->assertSame( 200, $this->deliver( $this->completed(), $id, $ts, null, "v1,$other v2,xyz v1,$good" )->get_status() );
	}

	public function test_plain_secret_without_whsec_prefix_is_used_as_is() {
		$this->configure( array( 'webhook_secret' => 'plain-shared-secret' ) );
		$this->assertSame( 200, $this->deliver( $this->completed(), null, null, 'plain-shared-secret' )->get_status() );
	}

	public function test_bad_signature_is_rejected_and_nothing_happens() {
		$response = $this->deliver( $this->completed(), null, null, 'wrong-secret' );
		$this->assertSame( 401, $response->get_status() );
		$this->assertSame( 'dap_webhook_bad_signature', $response->get_data()['code'] );
		$this->assertSame( array(), $this->fired );
		$this->assertSame( array(), $this->mails );
		$this->assertSame( array(), DAP_Notices::all() );
	}

	public function test_tampered_body_is_rejected() {
		$id   = 'msg_tamper';
		$ts   = time();
		$body = wp_json_encode( $this->completed( 't-1' ) );
		$sig  = 'v1,' . base64_encode( hash_hmac( 'sha256', "$id.$ts.$body", self::SECRET_BYTES, true ) );
		// Same signature, different body.
		$this->assertSame( 401, $this->deliver( $this->completed( 't-2' ), $id, $ts, null, $sig )->get_status() );
		$this->assertSame( array(), $this->fired );
	}

	public function test_signature_without_version_prefix_is_rejected() {
		$id   = 'msg_noversion';
		$ts   = time();
		$body = wp_json_encode( $this->completed() );
		$sig  = base64_encode( hash_hmac( 'sha256', "$id.$ts.$body", self::SECRET_BYTES, true ) );
		$this->assertSame( 401, $this->deliver( $this->completed(), $id, $ts, null, $sig )->get_status() );
	}

	public function test_stale_and_future_timestamps_are_rejected() {
		foreach ( array( time() - 301, time() + 301, time() - 86400 ) as $ts ) {
			$response = $this->deliver( $this->completed(), null, $ts );
			$this->assertSame( 401, $response->get_status(), "ts $ts" );
			$this->assertSame( 'dap_webhook_stale', $response->get_data()['code'] );
		}
		$this->assertSame( 200, $this->deliver( $this->completed(), null, time() - 250 )->get_status(), 'within tolerance' );
		$this->assertCount( 1, $this->fired );
	}

	public function test_replayed_id_is_rejected() {
		$id = 'msg_replay';
		$ts = time();
		$this->assertSame( 200, $this->deliver( $this->completed(), $id, $ts )->get_status() );
		$response = $this->deliver( $this->completed(), $id, $ts );
		$this->assertSame( 409, $response->get_status() );
		$this->assertSame( 'dap_webhook_replayed', $response->get_data()['code'] );
		$this->assertCount( 1, $this->fired, 'the action fired once' );
		$this->assertCount( 1, $this->mails );
	}

	public function test_seen_ids_expire_after_a_day() {
		update_option( DAP_Webhook::SEEN_OPTION, array( 'msg_old' => time() - DAY_IN_SECONDS - 10 ) );
		$this->assertSame( 200, $this->deliver( $this->completed(), 'msg_new' )->get_status() );
		$seen = get_option( DAP_Webhook::SEEN_OPTION );
		$this->assertArrayNotHasKey( 'msg_old', $seen );
		$this->assertArrayHasKey( 'msg_new', $seen );
	}

	public function test_missing_headers_and_unconfigured_secret() {
		$request = new WP_REST_Request( 'POST', '/dap/v1/webhook' );
		$request->set_body( wp_json_encode( $this->completed() ) );
		$this->assertSame( 400, rest_do_request( $request )->get_status() );

		$this->configure( array( 'webhook_secret' => '' ) );
		$response = $this->deliver( $this->completed() );
		$this->assertSame( 503, $response->get_status() );
		$this->assertSame( array(), $this->fired );
	}

	public function test_other_event_types_are_acknowledged_but_ignored() {
		$response = $this->deliver(
			array(
				'type' => 'task.progress',
				'data' => array( 'task_id' => 't-1' ),
			)
		);
		$this->assertSame( 200, $response->get_status() );
		$this->assertFalse( $response->get_data()['handled'] );
		$this->assertSame( array(), $this->fired );
	}
}
