<?php
/**
 * The New task page: one form for operations 100 / 200 / 300 / 400.
 *
 * @package DistributedDataAnalysis
 */

defined( 'ABSPATH' ) || exit;

/**
 * Renders the New task form. Datasets and their schemas come from what runners advertise
 * (`GET /api/v1/datasets`); each dataset option carries its columns as JSON so that
 * assets/js/dap-task-form.js can refill every column picker when the dataset (or the earlier
 * task used as input) changes, without a reload. The pickers are also filled server-side for the
 * first dataset, so the form works without JavaScript for it. It renders only; the posted form
 * is checked and turned into a task by DAP_Task_Form.
 */
class DAP_New_Task_Page {

	/**
	 * Labels of the operators, keyed by the runner's names.
	 *
	 * @return array<string, string>
	 */
	public static function operator_labels() {
		return array(
			'eq'       => __( 'equals (=)', 'distributed-data-analysis' ),
			'ne'       => __( 'is not (≠)', 'distributed-data-analysis' ),
			'lt'       => __( 'less than (<)', 'distributed-data-analysis' ),
			'le'       => __( 'at most (≤)', 'distributed-data-analysis' ),
			'gt'       => __( 'greater than (>)', 'distributed-data-analysis' ),
			'ge'       => __( 'at least (≥)', 'distributed-data-analysis' ),
			'in'       => __( 'is one of (comma-separated)', 'distributed-data-analysis' ),
			'contains' => __( 'contains (text)', 'distributed-data-analysis' ),
			'between'  => __( 'between (inclusive)', 'distributed-data-analysis' ),
			'is_null'  => __( 'is empty', 'distributed-data-analysis' ),
			'not_null' => __( 'is not empty', 'distributed-data-analysis' ),
		);
	}

	/**
	 * Render the page (the caller has checked the capability).
	 *
	 * @param callable $flash Prints the pending flash message.
	 */
	public static function render( callable $flash ) {
		echo '<div class="wrap"><h1>' . esc_html__( 'New task', 'distributed-data-analysis' ) . '</h1>';
		$flash();
		$client   = DAP_Client::from_settings();
		$datasets = $client->list_datasets();
		if ( is_wp_error( $datasets ) ) {
			DAP_Admin::print_error( $datasets );
			echo '</div>';
			return;
		}
		$runners = $client->list_runners();
		$runners = is_wp_error( $runners ) ? array() : (array) ( $runners['runners'] ?? array() );
		$sets    = array();
		foreach ( (array) ( $datasets['datasets'] ?? array() ) as $set ) {
			$name = is_array( $set ) ? (string) ( $set['name'] ?? '' ) : '';
			if ( '' !== $name ) {
				$sets[ $name ] = self::schema_list( $set );
			}
		}
		if ( ! $sets ) {
			echo '<div class="notice notice-warning inline"><p>' . esc_html__( 'No runner advertises a dataset yet. Start a dap-runner with --dataset name=path.', 'distributed-data-analysis' ) . '</p></div>';
		}
		$done  = $client->list_tasks(
			array(
				'status' => 'completed',
				'limit'  => 50,
			)
		);
		$done  = is_wp_error( $done ) ? array() : (array) ( $done['tasks'] ?? array() );
		$first = $sets ? reset( $sets ) : array();

		echo '<form method="post" action="' . esc_url( admin_url( 'admin-post.php' ) ) . '" class="dap-new-task" data-dap-task-form>';
		echo '<input type="hidden" name="action" value="dap_create_task" />';
		wp_nonce_field( 'dap_create_task' );
		echo '<table class="form-table" role="presentation"><tbody>';

		self::row_start( 'dap-operation', __( 'Operation', 'distributed-data-analysis' ) );
		echo '<select name="operation_code" id="dap-operation">';
		foreach ( array(
			100 => __( '100 — fetch raw data', 'distributed-data-analysis' ),
			200 => __( '200 — filter data', 'distributed-data-analysis' ),
			300 => __( '300 — ML model analysis', 'distributed-data-analysis' ),
			400 => __( '400 — export report', 'distributed-data-analysis' ),
		) as $code => $label ) {
			printf( '<option value="%1$d">%2$s</option>', (int) $code, esc_html( $label ) );
		}
		echo '</select>';
		self::row_end();

		// Input: a dataset, or (200/300/400) the output of an earlier completed task.
		self::row_start( '', __( 'Input', 'distributed-data-analysis' ), '200 300 400', 'dap-source-row' );
		echo '<fieldset><label><input type="radio" name="source" value="dataset" checked /> ' . esc_html__( 'a dataset', 'distributed-data-analysis' ) . '</label> &nbsp; ';
		printf( '<label><input type="radio" name="source" value="task" %1$s /> %2$s</label></fieldset>', disabled( empty( $done ), true, false ), esc_html__( 'the output of an earlier completed task', 'distributed-data-analysis' ) );
		echo '<p data-dap-source="task"><select name="input_task" id="dap-input-task">';
		echo '<option value="">' . esc_html__( '— choose a completed task —', 'distributed-data-analysis' ) . '</option>';
		$names = array_map( static function ( $schema ) {
			return wp_list_pluck( $schema, 'name' );
		}, $sets );
		foreach ( $done as $task ) {
			$id      = (string) ( $task['task_id'] ?? '' );
			$columns = DAP_Task_Form::output_columns( (array) $task, $names );
			$schema  = array_map( static function ( $c ) {
				return array(
					'name'  => (string) $c,
					'dtype' => '',
				);
			}, (array) $columns );
			printf(
				'<option value="%1$s" data-columns="%2$s">%3$s</option>',
				esc_attr( $id ),
				esc_attr( (string) wp_json_encode( $schema ) ),
				esc_html( sprintf( '%s — %s %s (%s)', $id, (string) ( $task['operation_code'] ?? '' ), (string) ( $task['operation'] ?? '' ), (string) ( $task['params']['dataset'] ?? '' ) ) )
			);
		}
		echo '</select></p>';
		self::row_end();

		self::row_start( 'dap-dataset', __( 'Dataset', 'distributed-data-analysis' ), '', 'dap-dataset-row' );
		echo '<select name="dataset" id="dap-dataset">';
		foreach ( $sets as $name => $schema ) {
			printf(
				'<option value="%1$s" data-columns="%2$s">%3$s</option>',
				esc_attr( $name ),
				esc_attr( (string) wp_json_encode( $schema ) ),
				esc_html( $name . ( $schema ? ' (' . implode( ', ', wp_list_pluck( $schema, 'name' ) ) . ')' : '' ) )
			);
		}
		echo '</select>';
		self::row_end();

		// 100 / 200 / 400: columns and limit.
		self::row_start( 'dap-columns', __( 'Columns', 'distributed-data-analysis' ), '100 200 400' );
		self::picker( 'columns[]', 'dap-columns', $first, 'all', true );
		echo '<p class="description">' . esc_html__( 'None selected: all columns (operation 200/400: of the grouped output when grouping).', 'distributed-data-analysis' ) . '</p>';
		self::row_end();
		self::row_start( 'dap-limit', __( 'Row limit', 'distributed-data-analysis' ), '100 200 400' );
		echo '<input type="number" min="0" name="limit" id="dap-limit" value="100" />';
		self::row_end();
		self::row_start( 'dap-offset', __( 'Offset', 'distributed-data-analysis' ), '100' );
		echo '<input type="number" min="0" name="offset" id="dap-offset" value="" />';
		self::row_end();

		// 200 / 400: the filter builder.
		self::row_start( '', __( 'Conditions', 'distributed-data-analysis' ), '200 400' );
		echo '<p><label>' . esc_html__( 'Keep rows that match', 'distributed-data-analysis' ) . ' <select name="where_mode" id="dap-where-mode"><option value="all">' . esc_html__( 'all conditions', 'distributed-data-analysis' ) . '</option><option value="any">' . esc_html__( 'any condition', 'distributed-data-analysis' ) . '</option></select></label></p>';
		echo '<div data-dap-rows="where">';
		self::predicate_row( 0, $first );
		echo '</div><p><button type="button" class="button" data-dap-add="where">' . esc_html__( 'Add condition', 'distributed-data-analysis' ) . '</button></p>';
		self::row_end();

		self::row_start( '', __( 'Group by', 'distributed-data-analysis' ), '200 400' );
		self::picker( 'group_by[]', 'dap-group-by', $first, 'all', true );
		echo '<div data-dap-rows="agg">';
		self::aggregation_row( 0, $first );
		echo '</div><p><button type="button" class="button" data-dap-add="agg">' . esc_html__( 'Add aggregation', 'distributed-data-analysis' ) . '</button></p>';
		echo '<p class="description">' . esc_html__( 'Grouping without an aggregation counts the rows of each group.', 'distributed-data-analysis' ) . '</p>';
		self::row_end();

		self::row_start( '', __( 'Sort', 'distributed-data-analysis' ), '200 400' );
		echo '<div data-dap-rows="sort">';
		self::sort_row( 0, $first );
		echo '</div><p><button type="button" class="button" data-dap-add="sort">' . esc_html__( 'Add sort key', 'distributed-data-analysis' ) . '</button></p>';
		self::row_end();

		// 300: the model.
		self::row_start( 'dap-model', __( 'Model', 'distributed-data-analysis' ), '300' );
		echo '<select name="model" id="dap-model">';
		foreach ( array(
			'linear_regression'   => __( 'Linear regression', 'distributed-data-analysis' ),
			'logistic_regression' => __( 'Logistic regression', 'distributed-data-analysis' ),
			'kmeans'              => __( 'k-means clustering', 'distributed-data-analysis' ),
			'decision_tree'       => __( 'Decision tree', 'distributed-data-analysis' ),
		) as $model => $label ) {
			printf( '<option value="%1$s">%2$s</option>', esc_attr( $model ), esc_html( $label ) );
		}
		echo '</select>';
		self::row_end();
		self::row_start( 'dap-features', __( 'Features', 'distributed-data-analysis' ), '300' );
		self::picker( 'features[]', 'dap-features', $first, 'numeric', true );
		self::row_end();
		self::row_start( 'dap-target', __( 'Target', 'distributed-data-analysis' ), '300' );
		self::picker( 'target', 'dap-target', $first, 'all', false, __( '— none (k-means only) —', 'distributed-data-analysis' ) );
		self::row_end();
		self::row_start( 'dap-test-fraction', __( 'Test fraction', 'distributed-data-analysis' ), '300' );
		echo '<input type="number" step="0.01" min="0" max="0.99" name="test_fraction" id="dap-test-fraction" placeholder="0.2" />';
		self::row_end();
		self::row_start( 'dap-seed', __( 'Seed', 'distributed-data-analysis' ), '300' );
		echo '<input type="number" min="0" name="seed" id="dap-seed" placeholder="42" />';
		self::row_end();
		$options = DAP_Task_Form::model_options();
		self::row_start( 'dap-k', __( 'Clusters (k)', 'distributed-data-analysis' ), '300', '', $options['k'] );
		echo '<input type="number" min="1" max="1000" name="k" id="dap-k" placeholder="3" />';
		self::row_end();
		self::row_start( 'dap-max-depth', __( 'Maximum depth', 'distributed-data-analysis' ), '300', '', $options['max_depth'] );
		echo '<input type="number" min="1" max="1000" name="max_depth" id="dap-max-depth" />';
		self::row_end();
		self::row_start( 'dap-max-iterations', __( 'Maximum iterations', 'distributed-data-analysis' ), '300', '', $options['max_iterations'] );
		echo '<input type="number" min="1" max="1000000" name="max_iterations" id="dap-max-iterations" />';
		self::row_end();

		// 400: the file.
		self::row_start( 'dap-format', __( 'Format', 'distributed-data-analysis' ), '400' );
		echo '<select name="format" id="dap-format">';
		foreach ( array(
			'html'    => __( 'HTML report', 'distributed-data-analysis' ),
			'csv'     => 'CSV',
			'parquet' => 'Parquet',
			'json'    => __( 'JSON (NDJSON)', 'distributed-data-analysis' ),
		) as $format => $label ) {
			printf( '<option value="%1$s">%2$s</option>', esc_attr( $format ), esc_html( $label ) );
		}
		echo '</select>';
		self::row_end();
		self::row_start( 'dap-title', __( 'Title', 'distributed-data-analysis' ), '400', 'dap-title-row' );
		printf( '<input type="text" class="regular-text" maxlength="%1$d" name="title" id="dap-title" />', (int) DAP_Task_Form::MAX_TITLE );
		self::row_end();

		self::row_start( 'dap-runner', __( 'Runner', 'distributed-data-analysis' ) );
		echo '<select name="runner_id" id="dap-runner"><option value="">' . esc_html__( 'Any runner that has the dataset', 'distributed-data-analysis' ) . '</option>';
		foreach ( $runners as $runner ) {
			printf(
				'<option value="%1$s">%2$s</option>',
				esc_attr( (string) ( $runner['runner_id'] ?? '' ) ),
				esc_html( (string) ( $runner['name'] ?? '' ) . ' — ' . DAP_Admin::status_label( (string) ( $runner['state'] ?? '' ) ) )
			);
		}
		echo '</select> <label><input type="checkbox" name="queue" value="1" id="dap-queue" /> ' . esc_html__( 'Queue if the runner is busy', 'distributed-data-analysis' ) . '</label>';
		self::row_end();
		echo '</tbody></table>';
		submit_button( __( 'Start task', 'distributed-data-analysis' ) );
		echo '</form></div>';
	}

	/**
	 * A dataset's columns as `[{name, dtype}]`.
	 *
	 * @param array $set Dataset from the server.
	 * @return array[]
	 */
	private static function schema_list( array $set ) {
		$out = array();
		foreach ( (array) ( $set['columns'] ?? array() ) as $col ) {
			$name = is_array( $col ) ? (string) ( $col['name'] ?? '' ) : (string) $col;
			if ( '' !== $name ) {
				$out[] = array(
					'name'  => $name,
					'dtype' => is_array( $col ) ? (string) ( $col['dtype'] ?? '' ) : '',
				);
			}
		}
		return $out;
	}

	/**
	 * Open a form-table row shown for some operations (and models) only.
	 *
	 * @param string   $for    Id of the labelled control ('' for none).
	 * @param string   $label  Row label.
	 * @param string   $ops    Space-separated operation codes ('' = all).
	 * @param string   $class  Extra row class.
	 * @param string[] $models Models the row applies to (operation 300 options).
	 */
	private static function row_start( $for, $label, $ops = '', $class = '', array $models = array() ) {
		printf(
			'<tr class="%1$s"%2$s%3$s><th scope="row">%4$s</th><td>',
			esc_attr( trim( 'dap-field ' . $class ) ),
			'' !== $ops ? ' data-dap-ops="' . esc_attr( $ops ) . '"' : '',
			$models ? ' data-dap-models="' . esc_attr( implode( ' ', $models ) ) . '"' : '',
			'' !== $for ? '<label for="' . esc_attr( $for ) . '">' . esc_html( $label ) . '</label>' : esc_html( $label )
		);
	}

	/**
	 * Close a row.
	 */
	private static function row_end() {
		echo '</td></tr>';
	}

	/**
	 * A column picker: a select filled with the columns of `$schema` (and refilled by the script).
	 *
	 * @param string $name     Field name.
	 * @param string $id       Element id ('' for none).
	 * @param array  $schema   `[{name, dtype}]`.
	 * @param string $kind     all|numeric|text: which columns it offers.
	 * @param bool   $multiple Multi-select.
	 * @param string $empty    Label of an empty first option ('' for none).
	 */
	private static function picker( $name, $id, array $schema, $kind, $multiple, $empty = '' ) {
		printf(
			'<select name="%1$s"%2$s class="dap-column-picker" data-dap-columns="%3$s"%4$s%5$s>',
			esc_attr( $name ),
			'' !== $id ? ' id="' . esc_attr( $id ) . '"' : '',
			esc_attr( $kind ),
			$multiple ? ' multiple size="5"' : '',
			'' !== $empty ? ' data-dap-empty="' . esc_attr( $empty ) . '"' : ''
		);
		if ( '' !== $empty ) {
			echo '<option value="">' . esc_html( $empty ) . '</option>';
		}
		foreach ( $schema as $col ) {
			$numeric = DAP_Task_Form::is_numeric_dtype( $col['dtype'] );
			if ( ( 'numeric' === $kind && ! $numeric && '' !== $col['dtype'] ) || ( 'text' === $kind && 'str' !== $col['dtype'] && '' !== $col['dtype'] ) ) {
				continue;
			}
			printf( '<option value="%1$s">%2$s</option>', esc_attr( $col['name'] ), esc_html( $col['name'] . ( '' !== $col['dtype'] ? ' (' . $col['dtype'] . ')' : '' ) ) );
		}
		echo '</select>';
	}

	/**
	 * One condition row of the filter builder.
	 *
	 * @param int   $i      Row index.
	 * @param array $schema Columns.
	 */
	private static function predicate_row( $i, array $schema ) {
		echo '<p class="dap-row" data-dap-row="where">';
		self::picker( "where[$i][column]", '', $schema, 'all', false, __( '— column —', 'distributed-data-analysis' ) );
		printf( ' <select name="where[%d][op]" data-dap-op>', (int) $i );
		foreach ( self::operator_labels() as $op => $label ) {
			printf( '<option value="%1$s">%2$s</option>', esc_attr( $op ), esc_html( $label ) );
		}
		echo '</select>';
		printf( ' <input type="text" name="where[%1$d][value]" data-dap-value placeholder="%2$s" />', (int) $i, esc_attr__( 'value', 'distributed-data-analysis' ) );
		printf( ' <span data-dap-value2>%1$s <input type="text" name="where[%2$d][value2]" placeholder="%3$s" /></span>', esc_html__( 'and', 'distributed-data-analysis' ), (int) $i, esc_attr__( 'high value', 'distributed-data-analysis' ) );
		echo ' <button type="button" class="button-link" data-dap-remove>' . esc_html__( 'Remove', 'distributed-data-analysis' ) . '</button></p>';
	}

	/**
	 * One aggregation row.
	 *
	 * @param int   $i      Row index.
	 * @param array $schema Columns.
	 */
	private static function aggregation_row( $i, array $schema ) {
		echo '<p class="dap-row" data-dap-row="agg">';
		printf( '<select name="agg[%d][fn]"><option value="">%s</option>', (int) $i, esc_html__( '— aggregation —', 'distributed-data-analysis' ) );
		foreach ( DAP_Task_Form::AGGREGATIONS as $fn ) {
			printf( '<option value="%1$s">%1$s</option>', esc_attr( $fn ) );
		}
		echo '</select> ' . esc_html__( 'of', 'distributed-data-analysis' ) . ' ';
		self::picker( "agg[$i][column]", '', $schema, 'all', false, __( '(rows, for count)', 'distributed-data-analysis' ) );
		printf( ' %1$s <input type="text" name="agg[%2$d][as]" placeholder="%3$s" />', esc_html__( 'as', 'distributed-data-analysis' ), (int) $i, esc_attr__( 'output name (optional)', 'distributed-data-analysis' ) );
		echo ' <button type="button" class="button-link" data-dap-remove>' . esc_html__( 'Remove', 'distributed-data-analysis' ) . '</button></p>';
	}

	/**
	 * One sort row.
	 *
	 * @param int   $i      Row index.
	 * @param array $schema Columns.
	 */
	private static function sort_row( $i, array $schema ) {
		echo '<p class="dap-row" data-dap-row="sort">';
		self::picker( "sort[$i][column]", '', $schema, 'all', false, __( '— column —', 'distributed-data-analysis' ) );
		printf(
			' <select name="sort[%1$d][dir]"><option value="asc">%2$s</option><option value="desc">%3$s</option></select>',
			(int) $i,
			esc_html__( 'ascending', 'distributed-data-analysis' ),
			esc_html__( 'descending', 'distributed-data-analysis' )
		);
		echo ' <button type="button" class="button-link" data-dap-remove>' . esc_html__( 'Remove', 'distributed-data-analysis' ) . '</button></p>';
	}
}
