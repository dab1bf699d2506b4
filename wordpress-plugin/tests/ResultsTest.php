<?php
/**
 * Result view: model metrics, the export summary and embedded report, artifact downloads.
 *
 * @package DistributedDataAnalysis
 */

/**
 * The 300 / 400 result views against the fake server, and the dap_report / dap_artifact
 * handlers' capability, nonce and key handling.
 */
class ResultsTest extends DAP_Test_Case {

	protected function setUp(): void {
		parent::setUp();
		$this->configure();
	}

	protected function tearDown(): void {
		remove_all_filters( 'wp_redirect' );
		remove_all_filters( 'allowed_redirect_hosts' );
		parent::tearDown();
	}

	private function result_view( $task_id ) {
		$_GET = array( 'task_id' => $task_id );
		return $this->capture_output( array( new DAP_Admin(), 'render_tasks_page' ) );
	}

	public function test_classification_metrics_confusion_matrix_and_coefficients_as_tables() {
		$this->login_as( 'editor' );
		$html = $this->result_view( 't-model' );
		$this->assertStringContainsString( '<table class="widefat striped dap-metrics">', $html );
		$this->assertStringContainsString( '<tr data-metric="accuracy"><th scope="row">Accuracy</th><td>0.85</td></tr>', $html );
		$this->assertStringContainsString( '<tr data-metric="f1"><th scope="row">F1 (macro)</th><td>0.8654</td></tr>', $html );
		$this->assertStringNotContainsString( 'data-metric="r2"', $html, 'only the metrics the model reported' );
		// Confusion matrix: a header per predicted class, a row per actual class, labels escaped.
		$this->assertMatchesRegularExpression( '~<table class="widefat striped dap-confusion"><thead><tr><th scope="col">actual \\\\ predicted</th><th scope="col">&lt;b&gt;north&lt;/b&gt;</th><th scope="col">south</th></tr></thead><tbody><tr><th scope="row">&lt;b&gt;north&lt;/b&gt;</th><td>8</td><td>2</td></tr><tr><th scope="row">south</th><td>1</td><td>9</td></tr>~', $html );
		$this->assertStringNotContainsString( '<b>north</b>', $html );
		$this->assertStringContainsString( '<tr><th scope="row">units</th><td>0.1235</td></tr>', $html );
		$this->assertStringContainsString( '<tr><th scope="row">(intercept)</th><td>0.5</td></tr>', $html );
		$this->assertStringContainsString( 'dap-per-class', $html );
		// No rows in a model result: no empty result table, no chart.
		$this->assertStringNotContainsString( 'dap-result"', $html );
		$this->assertStringNotContainsString( 'dap-chart', $html );
		$this->assertStringNotContainsString( self::API_KEY, $html );
	}

	public function test_regression_and_kmeans_metrics() {
		$html = $this->capture_output(
			static function () {
				DAP_Results::render_model(
					array(
						'model'      => 'linear_regression',
						'features'   => array( 'x' ),
						'parameters' => array( 'coefficients' => array( 'x' => 2.0 ), 'intercept' => 1.0 ),
						'metrics'    => array( 'r2' => 0.987654, 'rmse' => 1.5, 'mae' => null ),
					)
				);
			}
		);
		$this->assertStringContainsString( '<tr data-metric="r2"><th scope="row">R²</th><td>0.9877</td></tr>', $html );
		$this->assertStringContainsString( '<tr data-metric="rmse"><th scope="row">RMSE</th><td>1.5</td></tr>', $html );
		$this->assertStringContainsString( '<tr data-metric="mae"><th scope="row">MAE</th><td>—</td></tr>', $html );
		$html = $this->capture_output(
			static function () {
				DAP_Results::render_model(
					array(
						'model'      => 'kmeans',
						'features'   => array( 'a', 'b' ),
						'parameters' => array( 'k' => 2, 'centroids' => array( array( 'a' => 1.0, 'b' => 2.0 ), array( 'a' => 3.5, 'b' => 4.0 ) ) ),
						'metrics'    => array( 'inertia' => 12.25, 'silhouette' => 0.71, 'cluster_sizes' => array( 5, 7 ) ),
					)
				);
			}
		);
		$this->assertStringContainsString( 'data-metric="inertia"', $html );
		$this->assertStringContainsString( '<tr data-metric="silhouette"><th scope="row">Silhouette</th><td>0.71</td></tr>', $html );
		$this->assertStringContainsString( '<tr><th scope="row">1</th><td>7</td><td>3.5</td><td>4</td></tr>', $html );
	}

	public function test_export_result_embeds_the_report_sandboxed_and_links_artifacts_through_wordpress() {
		$this->login_as( 'editor' );
		$html = $this->result_view( 't-report' );
		$this->assertStringContainsString( 'dap-summary', $html );
		$this->assertStringContainsString( '<td>63.75</td>', $html );
		$this->assertMatchesRegularExpression( '~<iframe class="dap-report" sandbox="" referrerpolicy="no-referrer" src="([^"]+)"~', $html );
		preg_match( '~<iframe class="dap-report" sandbox="" referrerpolicy="no-referrer" src="([^"]+)"~', $html, $m );
		$src = html_entity_decode( $m[1] );
		$this->assertStringContainsString( 'admin-post.php?action=dap_report&task_id=t-report', $src );
		parse_str( (string) wp_parse_url( $src, PHP_URL_QUERY ), $query );
		$this->assertSame( 1, wp_verify_nonce( $query['_wpnonce'], 'dap_report_t-report' ) );
		// Download links go through WordPress; no server URL, signed token or key in the page.
		$this->assertStringContainsString( 'action=dap_artifact', $html );
		$this->assertStringNotContainsString( 'token=', $html );
		$this->assertStringNotContainsString( getenv( 'DAP_FAKE_SERVER' ) . '/api', $html );
		$this->assertStringNotContainsString( self::API_KEY, $html );
	}

	/**
	 * Run an admin-post action with GET arguments; returns [output, died, redirect].
	 */
	private function admin_get( $action, array $get ) {
		$_GET     = array_merge( array( 'action' => $action ), $get );
		$_REQUEST = $_GET;
		add_filter(
			'wp_redirect',
			static function ( $location ) {
				throw new DAP_Test_Redirect( $location );
			}
		);
		$died     = null;
		$redirect = null;
		ob_start();
		try {
			do_action( 'admin_post_' . $action );
		} catch ( DAP_Test_Die $e ) {
			$died = $e;
		} catch ( DAP_Test_Redirect $e ) {
			$redirect = $e->getMessage();
		} finally {
			$out = ob_get_clean();
		}
		return array( $out, $died, $redirect );
	}

	public function test_report_handler_serves_the_report_fetched_with_the_key_to_viewers_only() {
		$this->login_as( 'subscriber' );
		list( $out, $died ) = $this->admin_get( 'dap_report', array( 'task_id' => 't-report', '_wpnonce' => wp_create_nonce( 'dap_report_t-report' ) ) );
		$this->assertSame( 403, $died->getCode() );
		$this->assertStringNotContainsString( 'Q1 report', $out );

		$this->login_as( 'editor' );
		list( $out, $died ) = $this->admin_get( 'dap_report', array( 'task_id' => 't-report', '_wpnonce' => wp_create_nonce( 'dap_report_t-other' ) ) );
		$this->assertSame( 403, $died->getCode(), 'a nonce for another task' );
		list( $out, $died ) = $this->admin_get( 'dap_report', array( 'task_id' => 't-report' ) );
		$this->assertSame( 403, $died->getCode(), 'no nonce' );

		list( $out, $died ) = $this->admin_get( 'dap_report', array( 'task_id' => 't-report', '_wpnonce' => wp_create_nonce( 'dap_report_t-report' ) ) );
		$this->assertNull( $died );
		$this->assertStringContainsString( '<h1>Q1 report</h1>', $out, 'the fake server only answers with the right key' );
		$this->assertStringNotContainsString( self::API_KEY, $out );

		$res = DAP_Results::report_response( 't-report' );
		$this->assertStringStartsWith( 'sandbox;', $res['headers']['Content-Security-Policy'] );
		$this->assertStringContainsString( "default-src 'none'", $res['headers']['Content-Security-Policy'] );
		$this->assertSame( 'nosniff', $res['headers']['X-Content-Type-Options'] );

		// A task without a report: the server's 404 becomes a 502 page with the reason.
		list( $out, $died ) = $this->admin_get( 'dap_report', array( 'task_id' => 't-done', '_wpnonce' => wp_create_nonce( 'dap_report_t-done' ) ) );
		$this->assertSame( 502, $died->getCode() );
	}

	public function test_artifact_handler_redirects_viewers_to_a_fresh_signed_url() {
		$this->login_as( 'subscriber' );
		list( , $died ) = $this->admin_get( 'dap_artifact', array( 'task_id' => 't-report', 'name' => 'report.html', '_wpnonce' => wp_create_nonce( 'dap_artifact_t-report' ) ) );
		$this->assertSame( 403, $died->getCode() );

		$this->login_as( 'editor' );
		list( , $died ) = $this->admin_get( 'dap_artifact', array( 'task_id' => 't-report', 'name' => 'report.html', '_wpnonce' => wp_create_nonce( 'dap_artifact_t-done' ) ) );
		$this->assertSame( 403, $died->getCode() );
		list( , $died ) = $this->admin_get( 'dap_artifact', array( 'task_id' => 't-report', 'name' => '../x', '_wpnonce' => wp_create_nonce( 'dap_artifact_t-report' ) ) );
		$this->assertSame( 400, $died->getCode() );

		list( , $died, $redirect ) = $this->admin_get( 'dap_artifact', array( 'task_id' => 't-report', 'name' => 'report.html', '_wpnonce' => wp_create_nonce( 'dap_artifact_t-report' ) ) );
		$this->assertNull( $died );
		$this->assertSame( getenv( 'DAP_FAKE_SERVER' ) . '/api/v1/tasks/t-report/artifacts/report.html?token=signed-' . DAP_Results::DOWNLOAD_TTL, $redirect );
	}

	public function test_artifact_link_carries_a_nonce_for_its_task() {
		$this->login_as( 'editor' );
		$url = html_entity_decode( DAP_Results::artifact_link( 't-9', 'output.csv' ) );
		parse_str( (string) wp_parse_url( $url, PHP_URL_QUERY ), $query );
		$this->assertSame( 'dap_artifact', $query['action'] );
		$this->assertSame( 'output.csv', $query['name'] );
		$this->assertSame( 1, wp_verify_nonce( $query['_wpnonce'], 'dap_artifact_t-9' ) );
	}
}
