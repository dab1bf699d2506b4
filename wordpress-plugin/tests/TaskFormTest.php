<?php
/**
 * The New task form's server side: sanitising the posted form and building the task params.
 *
 * @package DistributedDataAnalysis
 */

/**
 * DAP_Task_Form::build() for operations 100–400, checked against the JSON shapes the runner's
 * operations read, and DAP_Admin::create_task_from_input() against the fake server.
 */
class TaskFormTest extends DAP_Test_Case {

	const SCHEMA = array(
		'region'  => 'str',
		'units'   => 'i64',
		'price'   => 'f64',
		'paid'    => 'bool',
		'note'    => 'str',
		'revenue' => 'f64',
	);

	private function build( array $input, $schema = self::SCHEMA ) {
		$res = DAP_Task_Form::build( array_merge( array( 'dataset' => 'sales' ), $input ), $schema );
		$this->assertFalse( is_wp_error( $res ), is_wp_error( $res ) ? $res->get_error_code() . ': ' . $res->get_error_message() : '' );
		return $res;
	}

	private function refused( $code, array $input, $schema = self::SCHEMA ) {
		$res = DAP_Task_Form::build( array_merge( array( 'dataset' => 'sales' ), $input ), $schema );
		$this->assertInstanceOf( WP_Error::class, $res, wp_json_encode( $input ) );
		$this->assertSame( $code, $res->get_error_code(), $res->get_error_message() );
		$this->assertSame( 400, $res->get_error_data()['status'] );
		return $res->get_error_message();
	}

	public function test_every_operator_combined_with_any_and_values_typed_by_the_schema() {
		$where = array(
			array( 'column' => 'region', 'op' => 'eq', 'value' => '10' ),
			array( 'column' => 'units', 'op' => 'ne', 'value' => '3' ),
			array( 'column' => 'price', 'op' => 'lt', 'value' => '7' ),
			array( 'column' => 'units', 'op' => 'le', 'value' => '2.5' ),
			array( 'column' => 'revenue', 'op' => 'gt', 'value' => '1e3' ),
			array( 'column' => 'revenue', 'op' => 'ge', 'value' => '-4' ),
			array( 'column' => 'region', 'op' => 'in', 'value' => 'North, South ,,East' ),
			array( 'column' => 'note', 'op' => 'contains', 'value' => 'rush <b>order</b>' ),
			array( 'column' => 'price', 'op' => 'between', 'value' => '1', 'value2' => '9.5' ),
			array( 'column' => 'note', 'op' => 'is_null', 'value' => 'ignored' ),
			array( 'column' => 'paid', 'op' => 'not_null' ),
			array( 'column' => 'paid', 'op' => 'eq', 'value' => 'TRUE' ),
			array( 'column' => '', 'op' => 'eq', 'value' => 'blank rows are skipped' ),
		);
		$task  = $this->build( array( 'operation_code' => '200', 'where' => $where, 'where_mode' => 'any' ) );
		$this->assertSame( 200, $task['operation_code'] );
		$this->assertSame(
			array(
				'any' => array(
					array( 'column' => 'region', 'op' => 'eq', 'value' => '10' ),
					array( 'column' => 'units', 'op' => 'ne', 'value' => 3 ),
					array( 'column' => 'price', 'op' => 'lt', 'value' => 7.0 ),
					array( 'column' => 'units', 'op' => 'le', 'value' => 2.5 ),
					array( 'column' => 'revenue', 'op' => 'gt', 'value' => 1000.0 ),
					array( 'column' => 'revenue', 'op' => 'ge', 'value' => -4.0 ),
					array( 'column' => 'region', 'op' => 'in', 'value' => array( 'North', 'South', 'East' ) ),
					array( 'column' => 'note', 'op' => 'contains', 'value' => 'rush order' ),
					array( 'column' => 'price', 'op' => 'between', 'value' => array( 1.0, 9.5 ) ),
					array( 'column' => 'note', 'op' => 'is_null' ),
					array( 'column' => 'paid', 'op' => 'not_null' ),
					array( 'column' => 'paid', 'op' => 'eq', 'value' => true ),
				),
			),
			$task['params']['where']
		);
		$this->assertSame( array( 'dataset', 'where' ), array_keys( $task['params'] ) );
		// The server receives numbers for numeric columns, never numeric strings.
		$this->assertStringContainsString( '"op":"lt","value":7}', wp_json_encode( $task['params'] ) );
		$this->assertStringContainsString( '"op":"eq","value":"10"}', wp_json_encode( $task['params'] ) );
	}

	public function test_one_condition_is_sent_alone_and_all_is_the_default() {
		$one = $this->build( array( 'operation_code' => '200', 'where' => array( array( 'column' => 'units', 'op' => 'gt', 'value' => '5' ) ) ) );
		$this->assertSame( array( 'column' => 'units', 'op' => 'gt', 'value' => 5 ), $one['params']['where'] );
		$two = $this->build(
			array(
				'operation_code' => '200',
				'where'          => array(
					array( 'column' => 'units', 'op' => 'gt', 'value' => '5' ),
					array( 'column' => 'paid', 'op' => 'is_null' ),
				),
			)
		);
		$this->assertSame( array( 'all' ), array_keys( $two['params']['where'] ) );
		$this->refused( 'dap_invalid_filter', array( 'operation_code' => '200', 'where_mode' => 'xor', 'where' => $two['params']['where']['all'] ) );
	}

	public function test_wrong_conditions_are_refused_with_a_reason() {
		$cases = array(
			array( 'dap_invalid_filter', array( 'column' => 'units', 'op' => 'like', 'value' => '1' ), 'unknown operator' ),
			array( 'dap_invalid_filter', array( 'column' => 'units', 'op' => 'eq', 'value' => '' ), 'needs a value' ),
			array( 'dap_invalid_filter', array( 'column' => 'units', 'op' => 'eq', 'value' => 'many' ), 'holds numbers' ),
			array( 'dap_invalid_filter', array( 'column' => 'price', 'op' => 'in', 'value' => '1, x' ), 'holds numbers' ),
			array( 'dap_invalid_filter', array( 'column' => 'price', 'op' => 'between', 'value' => '1' ), 'low and a high' ),
			array( 'dap_invalid_filter', array( 'column' => 'region', 'op' => 'in', 'value' => ' , ' ), 'needs a value' ),
			array( 'dap_invalid_filter', array( 'column' => 'units', 'op' => 'contains', 'value' => '1' ), 'text columns only' ),
			array( 'dap_invalid_filter', array( 'column' => 'paid', 'op' => 'eq', 'value' => 'yes' ), 'true/false' ),
			array( 'dap_unknown_column', array( 'column' => 'nope', 'op' => 'eq', 'value' => '1' ), 'no column “nope”' ),
		);
		foreach ( $cases as list( $code, $predicate, $reason ) ) {
			$message = $this->refused( $code, array( 'operation_code' => '200', 'where' => array( $predicate ) ) );
			$this->assertStringContainsString( $reason, $message );
		}
	}

	public function test_without_a_schema_columns_pass_and_values_are_typed_by_their_look() {
		$task = $this->build(
			array(
				'operation_code' => '200',
				'where'          => array( array( 'column' => 'anything', 'op' => 'between', 'value' => '2', 'value2' => '2.5' ) ),
				'columns'        => array( 'a', 'b' ),
			),
			null
		);
		$this->assertSame( array( 2, 2.5 ), $task['params']['where']['value'] );
		$this->assertSame( array( 'a', 'b' ), $task['params']['select'] );
	}

	public function test_select_multi_column_sort_and_limit() {
		$task = $this->build(
			array(
				'operation_code' => '200',
				'columns'        => array( 'region', 'revenue', 'region', '' ),
				'sort'           => array(
					array( 'column' => 'revenue', 'dir' => 'desc' ),
					array( 'column' => '', 'dir' => 'desc' ),
					array( 'column' => 'units', 'dir' => 'asc' ),
				),
				'limit'          => '25',
			)
		);
		$this->assertSame(
			array(
				'dataset' => 'sales',
				'select'  => array( 'region', 'revenue' ),
				'sort'    => array(
					array( 'column' => 'revenue', 'descending' => true ),
					array( 'column' => 'units', 'descending' => false ),
				),
				'limit'   => 25,
			),
			$task['params']
		);
		$this->refused( 'dap_invalid_sort', array( 'operation_code' => '200', 'sort' => array( array( 'column' => 'units' ), array( 'column' => 'units', 'dir' => 'desc' ) ) ) );
		$this->refused( 'dap_unknown_column', array( 'operation_code' => '200', 'sort' => array( array( 'column' => 'ghost' ) ) ) );
		$this->refused( 'dap_unknown_column', array( 'operation_code' => '200', 'columns' => array( 'region', 'ghost' ) ) );
		$this->refused( 'dap_invalid_number', array( 'operation_code' => '200', 'limit' => '-1' ) );
		$this->refused( 'dap_invalid_number', array( 'operation_code' => '200', 'limit' => '12abc' ) );
		$this->assertArrayNotHasKey( 'limit', $this->build( array( 'operation_code' => '200', 'limit' => '' ) )['params'] );
	}

	public function test_group_by_with_every_aggregation_and_output_names_usable_in_select_and_sort() {
		$aggs = array();
		foreach ( DAP_Task_Form::AGGREGATIONS as $fn ) {
			$aggs[] = array( 'fn' => $fn, 'column' => 'revenue', 'as' => '' );
		}
		$aggs[] = array( 'fn' => 'count', 'column' => '', 'as' => 'rows' );
		$aggs[] = array( 'fn' => '', 'column' => 'units' ); // Blank row: skipped.
		$task   = $this->build(
			array(
				'operation_code' => '200',
				'group_by'       => array( 'region' ),
				'agg'            => $aggs,
				'columns'        => array( 'region', 'revenue_sum', 'rows' ),
				'sort'           => array( array( 'column' => 'revenue_mean', 'dir' => 'desc' ) ),
			)
		);
		$expected = array();
		foreach ( DAP_Task_Form::AGGREGATIONS as $fn ) {
			$expected[] = array( 'fn' => $fn, 'column' => 'revenue' );
		}
		$expected[] = array( 'fn' => 'count', 'as' => 'rows' );
		$this->assertSame( array( 'by' => array( 'region' ), 'aggregations' => $expected ), $task['params']['group_by'] );
		$this->assertSame( array( 'region', 'revenue_sum', 'rows' ), $task['params']['select'] );

		$counted = $this->build( array( 'operation_code' => '200', 'group_by' => array( 'region', 'paid' ) ) );
		$this->assertSame( array( array( 'fn' => 'count' ) ), $counted['params']['group_by']['aggregations'], 'grouping alone counts rows' );

		$this->refused( 'dap_invalid_group_by', array( 'operation_code' => '200', 'agg' => array( array( 'fn' => 'sum', 'column' => 'units' ) ) ) );
		$this->refused( 'dap_invalid_group_by', array( 'operation_code' => '200', 'group_by' => array( 'region' ), 'agg' => array( array( 'fn' => 'mode', 'column' => 'units' ) ) ) );
		$this->refused( 'dap_invalid_group_by', array( 'operation_code' => '200', 'group_by' => array( 'region' ), 'agg' => array( array( 'fn' => 'sum', 'column' => '' ) ) ) );
		$this->refused( 'dap_invalid_group_by', array( 'operation_code' => '200', 'group_by' => array( 'region' ), 'agg' => array( array( 'fn' => 'mean', 'column' => 'note' ) ) ) );
		$this->assertStringContainsString( 'twice', $this->refused( 'dap_invalid_group_by', array( 'operation_code' => '200', 'group_by' => array( 'region' ), 'agg' => array( array( 'fn' => 'max', 'column' => 'units', 'as' => 'region' ) ) ) ) );
		$this->refused( 'dap_unknown_column', array( 'operation_code' => '200', 'group_by' => array( 'region' ), 'columns' => array( 'units' ) ) );
	}

	public function test_each_model_gets_only_its_own_options() {
		$common = array(
			'operation_code' => '300',
			'features'       => array( 'units', 'price' ),
			'target'         => 'revenue',
			'test_fraction'  => '0.25',
			'seed'           => '7',
			'k'              => '4',
			'max_depth'      => '3',
			'max_iterations' => '50',
		);
		$expect = array(
			'linear_regression'   => array(),
			'logistic_regression' => array( 'max_iterations' => 50 ),
			'kmeans'              => array( 'k' => 4, 'max_iterations' => 50 ),
			'decision_tree'       => array( 'max_depth' => 3 ),
		);
		foreach ( $expect as $model => $options ) {
			$task = $this->build( array_merge( $common, array( 'model' => $model, 'target' => 'linear_regression' === $model ? 'revenue' : 'region' ) ) );
			$this->assertSame( 300, $task['operation_code'] );
			$this->assertSame(
				array_merge(
					array(
						'dataset'       => 'sales',
						'model'         => $model,
						'features'      => array( 'units', 'price' ),
						'target'        => 'linear_regression' === $model ? 'revenue' : 'region',
						'test_fraction' => 0.25,
						'seed'          => 7,
					),
					$options
				),
				$task['params'],
				$model
			);
		}
		$kmeans = $this->build( array( 'operation_code' => '300', 'model' => 'kmeans', 'features' => array( 'units' ), 'test_fraction' => '0' ) );
		$this->assertSame( array( 'dataset' => 'sales', 'model' => 'kmeans', 'features' => array( 'units' ), 'test_fraction' => 0.0 ), $kmeans['params'], 'k-means needs no target and accepts 0' );
	}

	public function test_wrong_model_forms_are_refused() {
		$ok = array( 'operation_code' => '300', 'model' => 'decision_tree', 'features' => array( 'units' ), 'target' => 'region' );
		$this->refused( 'dap_invalid_model', array_merge( $ok, array( 'model' => 'svm' ) ) );
		$this->refused( 'dap_invalid_model', array_merge( $ok, array( 'features' => array() ) ) );
		$this->refused( 'dap_invalid_model', array_merge( $ok, array( 'target' => '' ) ) );
		$this->refused( 'dap_invalid_model', array_merge( $ok, array( 'target' => 'units' ) ) );
		$this->assertStringContainsString( 'numeric', $this->refused( 'dap_invalid_model', array_merge( $ok, array( 'features' => array( 'units', 'region' ) ) ) ) );
		$this->refused( 'dap_invalid_model', array_merge( $ok, array( 'model' => 'linear_regression' ) ) ); // Text target.
		$this->refused( 'dap_unknown_column', array_merge( $ok, array( 'target' => 'ghost' ) ) );
		$this->refused( 'dap_invalid_number', array_merge( $ok, array( 'test_fraction' => '0' ) ) );
		$this->refused( 'dap_invalid_number', array_merge( $ok, array( 'test_fraction' => '1' ) ) );
		$this->refused( 'dap_invalid_number', array_merge( $ok, array( 'test_fraction' => 'half' ) ) );
		$this->refused( 'dap_invalid_number', array_merge( $ok, array( 'max_depth' => '0' ) ) );
		$this->refused( 'dap_invalid_number', array_merge( $ok, array( 'seed' => '-3' ) ) );
		$this->refused( 'dap_invalid_number', array( 'operation_code' => '300', 'model' => 'kmeans', 'features' => array( 'units' ), 'k' => '1001' ) );
	}

	public function test_export_formats_title_for_html_only_and_the_filter_parts() {
		$html = $this->build(
			array(
				'operation_code' => '400',
				'format'         => 'html',
				'title'          => ' Q1 <script>x</script>report ',
				'where'          => array( array( 'column' => 'units', 'op' => 'ge', 'value' => '2' ) ),
				'limit'          => '500',
			)
		);
		$this->assertSame(
			array(
				'dataset' => 'sales',
				'format'  => 'html',
				'where'   => array( 'column' => 'units', 'op' => 'ge', 'value' => 2 ),
				'limit'   => 500,
				'title'   => 'Q1 report',
			),
			$html['params']
		);
		foreach ( array( 'csv', 'parquet', 'json' ) as $format ) {
			$task = $this->build( array( 'operation_code' => '400', 'format' => $format, 'title' => 'ignored' ) );
			$this->assertSame( array( 'dataset' => 'sales', 'format' => $format ), $task['params'], $format );
		}
		$this->refused( 'dap_invalid_format', array( 'operation_code' => '400', 'format' => 'xlsx' ) );
		$this->refused( 'dap_invalid_format', array( 'operation_code' => '400' ) );
		$long = $this->build( array( 'operation_code' => '400', 'format' => 'html', 'title' => str_repeat( 'é', 600 ) ) );
		$this->assertSame( 500, mb_strlen( $long['params']['title'] ) );
	}

	public function test_fetch_columns_limit_and_offset() {
		$task = $this->build( array( 'operation_code' => '100', 'columns' => array( 'region' ), 'limit' => '12', 'offset' => '40' ) );
		$this->assertSame( array( 'dataset' => 'sales', 'columns' => array( 'region' ), 'limit' => 12, 'offset' => 40 ), $task['params'] );
		$this->refused( 'dap_invalid_number', array( 'operation_code' => '100', 'limit' => '10001' ) );
	}

	public function test_an_earlier_task_as_input_replaces_the_dataset_for_200_300_400() {
		foreach ( array(
			'200' => array(),
			'300' => array( 'model' => 'kmeans', 'features' => array( 'predicted' ) ),
			'400' => array( 'format' => 'csv' ),
		) as $code => $more ) {
			$task = $this->build( array_merge( array( 'operation_code' => $code, 'source' => 'task', 'input_task' => '01a2-b3_c', 'dataset' => 'sales' ), $more ) );
			$this->assertSame( array( 'task_id' => '01a2-b3_c' ), $task['params']['input'], $code );
			$this->assertArrayNotHasKey( 'dataset', $task['params'], $code );
		}
		// The earlier output's columns are unknown here: no schema check for them.
		$task = $this->build( array( 'operation_code' => '200', 'source' => 'task', 'input_task' => 't1', 'columns' => array( 'predicted' ) ) );
		$this->assertSame( array( 'predicted' ), $task['params']['select'] );
		// Operation 100 always reads a dataset.
		$fetch = $this->build( array( 'operation_code' => '100', 'source' => 'task', 'input_task' => 't1' ) );
		$this->assertSame( array( 'dataset' => 'sales' ), $fetch['params'] );
		$this->refused( 'dap_invalid_input', array( 'operation_code' => '200', 'source' => 'task', 'input_task' => '' ) );
		$this->refused( 'dap_invalid_input', array( 'operation_code' => '200', 'source' => 'task', 'input_task' => '../x' ) );
	}

	public function test_operation_dataset_runner_and_queue() {
		$this->refused( 'dap_invalid_operation', array( 'operation_code' => '500' ) );
		$this->refused( 'dap_invalid_operation', array( 'operation_code' => array( '100' ) ) );
		$this->assertSame( 'dap_missing_dataset', DAP_Task_Form::build( array( 'operation_code' => '100' ) )->get_error_code() );
		$task = $this->build( array( 'operation_code' => '100', 'runner_id' => ' r-1 ', 'queue' => '1' ) );
		$this->assertSame( 'r-1', $task['runner_id'] );
		$this->assertTrue( $task['queue'] );
		$task = $this->build( array( 'operation_code' => '100' ) );
		$this->assertNull( $task['runner_id'] );
		$this->assertFalse( $task['queue'] );
	}

	public function test_output_columns_of_earlier_tasks() {
		$datasets = array( 'sales' => array( 'region', 'units', 'revenue' ) );
		$this->assertSame( array( 'region', 'units', 'revenue' ), DAP_Task_Form::output_columns( array( 'operation_code' => 200, 'params' => array( 'dataset' => 'sales' ) ), $datasets ) );
		$this->assertSame( array( 'units' ), DAP_Task_Form::output_columns( array( 'operation_code' => 100, 'params' => array( 'dataset' => 'sales', 'columns' => array( 'units' ) ) ), $datasets ) );
		$this->assertSame(
			array( 'region', 'total', 'units_max', 'count' ),
			DAP_Task_Form::output_columns(
				array(
					'operation_code' => 200,
					'params'         => array(
						'dataset'  => 'sales',
						'group_by' => array(
							'by'           => array( 'region' ),
							'aggregations' => array( array( 'fn' => 'sum', 'column' => 'revenue', 'as' => 'total' ), array( 'fn' => 'max', 'column' => 'units' ), array( 'fn' => 'count' ) ),
						),
					),
				),
				$datasets
			)
		);
		$this->assertSame( array( 'row', 'actual', 'predicted' ), DAP_Task_Form::output_columns( array( 'operation_code' => 300, 'params' => array() ), $datasets ) );
		$this->assertNull( DAP_Task_Form::output_columns( array( 'operation_code' => 200, 'params' => array( 'dataset' => 'gone' ) ), $datasets ) );
	}

	public function test_create_task_from_input_checks_against_the_advertised_schema_then_posts() {
		$this->configure();
		$admin = new DAP_Admin();
		// The fake server advertises sales(region: str, revenue: f64).
		$res = $admin->create_task_from_input(
			array(
				'operation_code' => '200',
				'dataset'        => 'sales',
				'where'          => array( array( 'column' => 'revenue', 'op' => 'ge', 'value' => '120' ) ),
				'columns'        => array( 'region' ),
			)
		);
		$this->assertFalse( is_wp_error( $res ), is_wp_error( $res ) ? $res->get_error_message() : '' );
		$this->assertSame( 't-new', $res['task_id'] );
		$this->assertSame(
			array(
				'dataset' => 'sales',
				'where'   => array( 'column' => 'revenue', 'op' => 'ge', 'value' => 120 ), // A number, not "120".
				'select'  => array( 'region' ),
			),
			$res['received']['params']
		);
		$this->assertSame( 'dap_unknown_column', $admin->create_task_from_input( array( 'operation_code' => '100', 'dataset' => 'sales', 'columns' => array( 'units' ) ) )->get_error_code() );
		$this->assertSame( 'dap_invalid_filter', $admin->create_task_from_input( array( 'operation_code' => '200', 'dataset' => 'sales', 'where' => array( array( 'column' => 'revenue', 'op' => 'eq', 'value' => 'lots' ) ) ) )->get_error_code() );
		// A dataset the server does not advertise: the runner checks the columns.
		$res = $admin->create_task_from_input( array( 'operation_code' => '100', 'dataset' => 'other', 'columns' => array( 'units' ) ) );
		$this->assertSame( array( 'units' ), $res['received']['params']['columns'] );
		// An earlier task as input.
		$res = $admin->create_task_from_input( array( 'operation_code' => '300', 'source' => 'task', 'input_task' => 't-done', 'model' => 'kmeans', 'features' => array( 'revenue' ) ) );
		$this->assertSame( array( 'input' => array( 'task_id' => 't-done' ), 'model' => 'kmeans', 'features' => array( 'revenue' ) ), $res['received']['params'] );
	}
}
