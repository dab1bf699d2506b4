<?php
/**
 * Router for `php -S`: a tiny stand-in for dap-server that answers like it, including its
 * failures (typed 4xx bodies, a 500, a slow endpoint), so the REST client meets real HTTP.
 *
 * Requests need `Authorization: Bearer test-key` under /api/v1 (else 401 `unauthorized`).
 *
 * @package DistributedDataAnalysis
 */

// phpcs:disable
$method = $_SERVER['REQUEST_METHOD'];
$path   = parse_url( $_SERVER['REQUEST_URI'], PHP_URL_PATH );
$body   = file_get_contents( 'php://input' );

function reply( $status, $data ) {
	http_response_code( $status );
	header( 'Content-Type: application/json' );
	echo json_encode( $data );
	exit;
}
function typed( $status, $code, $message, $details = null ) {
	$error = array( 'code' => $code, 'message' => $message );
	if ( null !== $details ) {
		// Like dap-server: the details sit next to code and message.
		$error = array_merge( $error, $details );
	}
	reply( $status, array( 'error' => $error ) );
}

if ( '/healthz' === $path ) {
	header( 'Content-Type: text/plain' );
	echo 'ok';
	exit;
}
if ( 0 === strpos( $path, '/api/v1/' ) && ( $_SERVER['HTTP_AUTHORIZATION'] ?? '' ) !== 'Bearer dapk_SECRET_7c1e93' ) {
	typed( 401, 'unauthorized', 'missing or invalid API key' );
}

$runners = array(
	array( 'runner_id' => 'r-busy', 'name' => 'laptop', 'state' => 'busy', 'slots' => 1, 'slots_used' => 1, 'current_task' => 't-running', 'datasets' => array( array( 'name' => 'sales', 'columns' => array( array( 'name' => 'region' ) ) ) ), 'last_seen_at' => '2026-01-01T00:00:00Z' ),
	array( 'runner_id' => 'r-idle', 'name' => 'server-2', 'state' => 'idle', 'slots' => 2, 'slots_used' => 0, 'current_task' => null, 'datasets' => array(), 'last_seen_at' => '2026-01-01T00:00:00Z' ),
);

switch ( true ) {
	case 'POST' === $method && '/api/v1/tasks' === $path:
		$req = json_decode( $body, true );
		if ( ! is_array( $req ) ) {
			typed( 400, 'invalid_json', 'body is not JSON' );
		}
		if ( ( $req['runner_id'] ?? '' ) === 'r-busy' && empty( $req['queue'] ) ) {
			typed( 409, 'runner_busy', 'runner laptop (r-busy) is busy with task t-running; retry later or pass "queue": true', array( 'runner_id' => 'r-busy', 'running_tasks' => array( 't-running' ) ) );
		}
		if ( ! in_array( $req['operation_code'] ?? 0, array( 100, 200, 300, 400 ), true ) ) {
			typed( 422, 'unknown_operation', 'unknown operation code' );
		}
		reply( 201, array( 'task_id' => 't-new', 'status' => 'assigned', 'runner_id' => 'r-idle', 'received' => $req ) );
	case 'GET' === $method && '/api/v1/tasks' === $path:
		$tasks = array(
			array( 'task_id' => 't-running', 'operation_code' => 100, 'operation' => 'fetch', 'status' => 'running', 'progress' => 42, 'stage' => 'reading', 'runner_id' => 'r-busy', 'created_at' => '2026-01-01T00:00:00Z' ),
			array( 'task_id' => 't-done', 'operation_code' => 200, 'operation' => 'filter', 'status' => 'completed', 'progress' => 100, 'stage' => 'done', 'runner_id' => 'r-idle', 'created_at' => '2026-01-01T00:00:00Z' ),
			array( 'task_id' => 't-failed', 'operation_code' => 200, 'operation' => 'filter', 'status' => 'failed', 'progress' => 20, 'stage' => 'filtering', 'runner_id' => 'r-idle', 'created_at' => '2026-01-01T00:00:00Z' ),
		);
		if ( isset( $_GET['status'] ) ) {
			$tasks = array_values( array_filter( $tasks, function ( $t ) { return $t['status'] === $_GET['status']; } ) );
		}
		reply( 200, array( 'tasks' => $tasks, 'total' => count( $tasks ), 'limit' => (int) ( $_GET['limit'] ?? 50 ), 'offset' => (int) ( $_GET['offset'] ?? 0 ), 'query' => $_GET ) );
	case '/api/v1/tasks/t-failed' === $path:
		reply( 200, array( 'task_id' => 't-failed', 'operation_code' => 200, 'params' => array( 'dataset' => 'sales', 'limit' => 3 ), 'target_runner_id' => 'r-idle', 'status' => 'failed', 'progress' => 20, 'error' => array( 'code' => 'runner_lost', 'message' => 'runner vanished' ) ) );
	case '/api/v1/tasks/t-done' === $path:
		reply( 200, array( 'task_id' => 't-done', 'operation_code' => 200, 'status' => 'completed', 'progress' => 100, 'stage' => 'done', 'error' => null ) );
	case '/api/v1/tasks/t-done/result' === $path:
		reply( 200, array( 'result_data' => array( 'columns' => array( 'region', 'revenue' ), 'rows' => array( array( 'north', 120.5 ), array( '<script>x</script>', 7 ) ), 'row_count' => 2 ) ) );
	case '/api/v1/tasks/t-done/artifacts' === $path:
		reply( 200, array( 'artifacts' => array( array( 'name' => 'report.html', 'size' => 2048 ) ) ) );
	case '/api/v1/tasks/t-done/artifacts/report.html/signed-url' === $path:
		reply( 200, array( 'url' => '/api/v1/tasks/t-done/artifacts/report.html?token=signed', 'expires_in' => 600 ) );
	case '/api/v1/tasks/t-model' === $path:
		reply( 200, array( 'task_id' => 't-model', 'operation_code' => 300, 'status' => 'completed', 'progress' => 100, 'stage' => 'done', 'error' => null ) );
	case '/api/v1/tasks/t-model/result' === $path:
		reply( 200, array( 'task_id' => 't-model', 'operation_code' => 300, 'result_data' => array( 'model' => 'logistic_regression', 'dataset' => 'sales', 'features' => array( 'units', 'unit_price' ), 'target' => 'region', 'n_train' => 80, 'n_test' => 20, 'dropped_rows' => 1, 'test_fraction' => 0.2, 'seed' => 7,
			'parameters' => array( 'kind' => 'binary', 'coefficients' => array( 'units' => 0.123456789, 'unit_price' => -2.5 ), 'intercept' => 0.5 ),
			'metrics' => array( 'accuracy' => 0.85, 'precision' => 0.8333333, 'recall' => 0.9, 'f1' => 0.8653846,
				'per_class' => array( array( 'label' => '<b>north</b>', 'precision' => 1.0, 'recall' => 0.8, 'f1' => 0.8888889, 'support' => 10 ), array( 'label' => 'south', 'precision' => 0.6666667, 'recall' => 1.0, 'f1' => 0.8, 'support' => 10 ) ),
				'confusion_matrix' => array( 'labels' => array( '<b>north</b>', 'south' ), 'matrix' => array( array( 8, 2 ), array( 1, 9 ) ) ) ) ),
			'artifacts' => array( array( 'name' => 'predictions.csv', 'size' => 300, 'content_type' => 'text/csv' ) ) ) );
	case '/api/v1/tasks/t-report' === $path:
		reply( 200, array( 'task_id' => 't-report', 'operation_code' => 400, 'status' => 'completed', 'progress' => 100, 'stage' => 'done', 'error' => null ) );
	case '/api/v1/tasks/t-report/result' === $path:
		reply( 200, array( 'task_id' => 't-report', 'operation_code' => 400, 'result_data' => array( 'dataset' => 'sales', 'format' => 'html', 'title' => 'Q1', 'row_count' => 2, 'columns' => array( 'region', 'revenue' ), 'artifact' => 'report.html',
			'summary' => array( array( 'column' => 'revenue', 'dtype' => 'f64', 'kind' => 'numeric', 'count' => 2, 'null_count' => 0, 'mean' => 63.75, 'std' => 80.2, 'min' => 7.0, '25%' => 35.4, '50%' => 63.75, '75%' => 92.1, 'max' => 120.5 ) ) ),
			'artifacts' => array( array( 'name' => 'report.html', 'size' => 1234, 'content_type' => 'text/html; charset=utf-8' ) ) ) );
	case 'GET' === $method && '/api/v1/tasks/t-report/artifacts/report.html' === $path:
		header( 'Content-Type: text/html; charset=utf-8' );
		echo '<!DOCTYPE html><html><head><title>Q1</title></head><body><h1>Q1 report</h1><script>alert(1)</script></body></html>';
		exit;
	case 'POST' === $method && '/api/v1/tasks/t-report/artifacts/report.html/signed-url' === $path:
		reply( 200, array( 'url' => '/api/v1/tasks/t-report/artifacts/report.html?token=signed-' . ( $_GET['ttl_s'] ?? '' ), 'expires_in' => (int) ( $_GET['ttl_s'] ?? 0 ) ) );
	case '/api/v1/tasks/boom' === $path:
		typed( 500, 'internal', 'internal error' );
	case '/api/v1/tasks/slow' === $path:
		sleep( 3 );
		reply( 200, array( 'task_id' => 'slow' ) );
	case '/api/v1/tasks/plain' === $path:
		http_response_code( 404 );
		echo 'not found';
		exit;
	case '/api/v1/tasks/notjson' === $path:
		echo '<html>hello</html>';
		exit;
	case 'POST' === $method && '/api/v1/tasks/t-done/cancel' === $path:
		typed( 409, 'task_finished', 'task t-done has already finished' );
	case 'POST' === $method && '/api/v1/sse-tickets' === $path:
		reply( 200, array( 'ticket' => 'tkt-' . md5( $body ), 'expires_in' => 60 ) );
	case '/api/v1/runners' === $path:
		reply( 200, array( 'runners' => $runners ) );
	case '/api/v1/datasets' === $path:
		reply( 200, array( 'datasets' => array( array( 'name' => 'sales', 'format' => 'csv', 'columns' => array( array( 'name' => 'region', 'dtype' => 'str' ), array( 'name' => 'revenue', 'dtype' => 'f64' ) ), 'runners' => array() ) ) ) );
	default:
		typed( 404, 'not_found', "no route $method $path" );
}
