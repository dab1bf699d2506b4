<?php
/**
 * The New task form's server side: sanitises a posted form and builds the task it describes.
 *
 * Builds `{operation_code, params, runner_id, queue}` for operations 100 (fetch), 200 (filter),
 * 300 (model) and 400 (export) in the JSON shapes the runner's operations read (see
 * runner/src/operations/*.rs). It checks what can be checked without running anything: known
 * operators, aggregations, models and formats, number ranges, options that apply to the chosen
 * model only, and — when the dataset's schema is known — column names and value types. It does
 * not talk to the server; the runner still validates everything again.
 *
 * @package DistributedDataAnalysis
 */

defined( 'ABSPATH' ) || exit;

/**
 * Posted form → task. Every method is static and side-effect free.
 */
class DAP_Task_Form {

	const OPERATIONS   = array( 100, 200, 300, 400 );
	const OPERATORS    = array( 'eq', 'ne', 'lt', 'le', 'gt', 'ge', 'in', 'contains', 'between', 'is_null', 'not_null' );
	const AGGREGATIONS = array( 'count', 'sum', 'mean', 'min', 'max', 'median', 'std' );
	const MODELS       = array( 'linear_regression', 'logistic_regression', 'kmeans', 'decision_tree' );
	const FORMATS      = array( 'csv', 'parquet', 'json', 'html' );
	/** Operations that may read an earlier task's output instead of a dataset. */
	const INPUT_OPERATIONS = array( 200, 300, 400 );
	/** Most rows of each repeatable part the form accepts (predicates, sort keys, aggregations). */
	const MAX_ROWS = 20;
	/** Longest export title (the runner's limit). */
	const MAX_TITLE = 500;

	/**
	 * Which model options apply to which models (the runner refuses the others).
	 *
	 * @return array<string, string[]>
	 */
	public static function model_options() {
		return array(
			'k'              => array( 'kmeans' ),
			'max_depth'      => array( 'decision_tree' ),
			'max_iterations' => array( 'logistic_regression', 'kmeans' ),
		);
	}

	/**
	 * Build the task from the posted form.
	 *
	 * @param array      $input  Unslashed form input (`$_POST`).
	 * @param array|null $schema Column name => dtype (`i64`, `f64`, `str`, …) of the chosen dataset;
	 *                           null when unknown (then columns are not checked and values are
	 *                           typed by their look).
	 * @return array|WP_Error `{operation_code, params, runner_id, queue}`.
	 */
	public static function build( array $input, $schema = null ) {
		$code = isset( $input['operation_code'] ) && is_scalar( $input['operation_code'] ) ? absint( $input['operation_code'] ) : 0;
		if ( ! in_array( $code, self::OPERATIONS, true ) ) {
			return self::error( 'dap_invalid_operation', __( 'Choose operation 100 (fetch), 200 (filter), 300 (model) or 400 (export).', 'distributed-data-analysis' ) );
		}
		$source = self::text( $input, 'source' );
		if ( 'task' === $source && in_array( $code, self::INPUT_OPERATIONS, true ) ) {
			$task_id = self::text( $input, 'input_task' );
			if ( ! preg_match( '/^[A-Za-z0-9_-]{1,64}$/', $task_id ) ) {
				return self::error( 'dap_invalid_input', __( 'Choose the earlier completed task whose output this task reads.', 'distributed-data-analysis' ) );
			}
			$params = array( 'input' => array( 'task_id' => $task_id ) );
			$schema = null; // The columns of an earlier output are not known here.
		} else {
			$dataset = self::text( $input, 'dataset' );
			if ( '' === $dataset ) {
				return self::error( 'dap_missing_dataset', __( 'Choose a dataset.', 'distributed-data-analysis' ) );
			}
			$params = array( 'dataset' => $dataset );
		}
		$schema = is_array( $schema ) && $schema ? $schema : null;

		switch ( $code ) {
			case 100:
				$more = self::fetch_params( $input, $schema );
				break;
			case 200:
				$more = self::filter_params( $input, $schema );
				break;
			case 300:
				$more = self::model_params( $input, $schema );
				break;
			default:
				$more = self::export_params( $input, $schema );
		}
		if ( is_wp_error( $more ) ) {
			return $more;
		}
		$runner_id = self::text( $input, 'runner_id' );
		return array(
			'operation_code' => $code,
			'params'         => array_merge( $params, $more ),
			'runner_id'      => '' !== $runner_id ? $runner_id : null,
			'queue'          => ! empty( $input['queue'] ),
		);
	}

	/**
	 * Operation 100: `columns`, `limit`, `offset`.
	 *
	 * @param array      $input  Form input.
	 * @param array|null $schema Schema.
	 * @return array|WP_Error
	 */
	private static function fetch_params( array $input, $schema ) {
		$params  = array();
		$columns = self::columns( $input, 'columns', $schema, __( 'Columns', 'distributed-data-analysis' ) );
		if ( is_wp_error( $columns ) ) {
			return $columns;
		}
		if ( $columns ) {
			$params['columns'] = $columns;
		}
		foreach ( array(
			'limit'  => 10000,
			'offset' => PHP_INT_MAX,
		) as $key => $max ) {
			$n = self::integer( $input, $key, 0, $max );
			if ( is_wp_error( $n ) ) {
				return $n;
			}
			if ( null !== $n ) {
				$params[ $key ] = $n;
			}
		}
		return $params;
	}

	/**
	 * Operation 200 (and the row choice of 400): `where`, `group_by`, `select`, `sort`, `limit`.
	 *
	 * @param array      $input  Form input.
	 * @param array|null $schema Schema.
	 * @return array|WP_Error
	 */
	public static function filter_params( array $input, $schema ) {
		$params = array();

		// where: the filled predicate rows, one predicate alone or combined with all / any.
		$predicates = array();
		foreach ( self::rows( $input, 'where' ) as $i => $row ) {
			$column = self::text( $row, 'column' );
			if ( '' === $column ) {
				continue;
			}
			$predicate = self::predicate( $row, $column, $schema, $i + 1 );
			if ( is_wp_error( $predicate ) ) {
				return $predicate;
			}
			$predicates[] = $predicate;
		}
		if ( count( $predicates ) > self::MAX_ROWS ) {
			/* translators: %d: maximum number of conditions */
			return self::error( 'dap_invalid_filter', sprintf( __( 'At most %d conditions.', 'distributed-data-analysis' ), self::MAX_ROWS ) );
		}
		if ( 1 === count( $predicates ) ) {
			$params['where'] = $predicates[0];
		} elseif ( $predicates ) {
			$mode = self::text( $input, 'where_mode' );
			$mode = '' === $mode ? 'all' : $mode;
			if ( ! in_array( $mode, array( 'all', 'any' ), true ) ) {
				return self::error( 'dap_invalid_filter', __( 'Combine the conditions with “all” or “any”.', 'distributed-data-analysis' ) );
			}
			$params['where'] = array( $mode => $predicates );
		}

		// group_by: key columns and aggregations (count of rows when none is given).
		$output = $schema; // What select and sort may name: the dataset's columns or the grouped output.
		$by     = self::columns( $input, 'group_by', $schema, __( 'Group by', 'distributed-data-analysis' ) );
		if ( is_wp_error( $by ) ) {
			return $by;
		}
		$aggregations = array();
		$names        = $by;
		foreach ( self::rows( $input, 'agg' ) as $i => $row ) {
			$fn = self::text( $row, 'fn' );
			if ( '' === $fn ) {
				continue;
			}
			$agg = self::aggregation( $row, $fn, $schema, $i + 1 );
			if ( is_wp_error( $agg ) ) {
				return $agg;
			}
			$name = $agg['as'] ?? ( isset( $agg['column'] ) ? $agg['column'] . '_' . $fn : 'count' );
			if ( in_array( $name, $names, true ) ) {
				/* translators: %s: output column name */
				return self::error( 'dap_invalid_group_by', sprintf( __( 'The output column “%s” would appear twice; give the aggregation another name.', 'distributed-data-analysis' ), $name ) );
			}
			$names[]        = $name;
			$aggregations[] = $agg;
		}
		if ( count( $aggregations ) > self::MAX_ROWS ) {
			/* translators: %d: maximum number of aggregations */
			return self::error( 'dap_invalid_group_by', sprintf( __( 'At most %d aggregations.', 'distributed-data-analysis' ), self::MAX_ROWS ) );
		}
		if ( $aggregations && ! $by ) {
			return self::error( 'dap_invalid_group_by', __( 'Aggregations need at least one “group by” column.', 'distributed-data-analysis' ) );
		}
		if ( $by ) {
			if ( ! $aggregations ) {
				$aggregations[] = array( 'fn' => 'count' );
				$names[]        = 'count';
			}
			$params['group_by'] = array(
				'by'           => $by,
				'aggregations' => $aggregations,
			);
			$output             = null === $schema ? null : array_fill_keys( $names, '' );
		}

		// The form's one "Columns" picker is `columns` for 100 and `select` for 200 / 400.
		$select = self::columns( $input, 'columns', $output, __( 'Columns', 'distributed-data-analysis' ) );
		if ( is_wp_error( $select ) ) {
			return $select;
		}
		if ( $select ) {
			$params['select'] = $select;
		}

		$sort = array();
		foreach ( self::rows( $input, 'sort' ) as $row ) {
			$column = self::text( $row, 'column' );
			if ( '' === $column ) {
				continue;
			}
			$known = self::known_column( $column, $output, __( 'Sort', 'distributed-data-analysis' ) );
			if ( is_wp_error( $known ) ) {
				return $known;
			}
			if ( in_array( $column, wp_list_pluck( $sort, 'column' ), true ) ) {
				/* translators: %s: column name */
				return self::error( 'dap_invalid_sort', sprintf( __( 'Sort by “%s” only once.', 'distributed-data-analysis' ), $column ) );
			}
			$sort[] = array(
				'column'     => $column,
				'descending' => 'desc' === self::text( $row, 'dir' ),
			);
		}
		if ( count( $sort ) > self::MAX_ROWS ) {
			/* translators: %d: maximum number of sort keys */
			return self::error( 'dap_invalid_sort', sprintf( __( 'At most %d sort keys.', 'distributed-data-analysis' ), self::MAX_ROWS ) );
		}
		if ( $sort ) {
			$params['sort'] = $sort;
		}

		$limit = self::integer( $input, 'limit', 0, 1000000000 );
		if ( is_wp_error( $limit ) ) {
			return $limit;
		}
		if ( null !== $limit ) {
			$params['limit'] = $limit;
		}
		return $params;
	}

	/**
	 * One predicate row → `{column, op[, value]}`.
	 *
	 * @param array      $row    `{column, op, value, value2}`.
	 * @param string     $column Column.
	 * @param array|null $schema Schema.
	 * @param int        $n      Row number for messages.
	 * @return array|WP_Error
	 */
	private static function predicate( array $row, $column, $schema, $n ) {
		$known = self::known_column( $column, $schema, __( 'Filter', 'distributed-data-analysis' ) );
		if ( is_wp_error( $known ) ) {
			return $known;
		}
		$op = self::text( $row, 'op' );
		if ( ! in_array( $op, self::OPERATORS, true ) ) {
			/* translators: %d: condition number */
			return self::error( 'dap_invalid_filter', sprintf( __( 'Condition %d: unknown operator.', 'distributed-data-analysis' ), $n ) );
		}
		$dtype     = self::dtype( $schema, $column );
		$predicate = array(
			'column' => $column,
			'op'     => $op,
		);
		$raw       = self::text( $row, 'value' );
		$missing   = self::error(
			'dap_invalid_filter',
			/* translators: 1: condition number, 2: operator */
			sprintf( __( 'Condition %1$d: “%2$s” needs a value.', 'distributed-data-analysis' ), $n, $op )
		);
		switch ( $op ) {
			case 'is_null':
			case 'not_null':
				return $predicate;
			case 'in':
				$items = array_values( array_filter( array_map( 'trim', explode( ',', $raw ) ), 'strlen' ) );
				if ( ! $items ) {
					return $missing;
				}
				$values = array();
				foreach ( $items as $item ) {
					$value = self::typed( $item, $dtype, $column );
					if ( is_wp_error( $value ) ) {
						return $value;
					}
					$values[] = $value;
				}
				$predicate['value'] = $values;
				return $predicate;
			case 'between':
				$high = self::text( $row, 'value2' );
				if ( '' === $raw || '' === $high ) {
					return self::error(
						'dap_invalid_filter',
						/* translators: %d: condition number */
						sprintf( __( 'Condition %d: “between” needs a low and a high value.', 'distributed-data-analysis' ), $n )
					);
				}
				$low  = self::typed( $raw, $dtype, $column );
				$high = self::typed( $high, $dtype, $column );
				if ( is_wp_error( $low ) ) {
					return $low;
				}
				if ( is_wp_error( $high ) ) {
					return $high;
				}
				$predicate['value'] = array( $low, $high );
				return $predicate;
			case 'contains':
				if ( '' === $raw ) {
					return $missing;
				}
				if ( null !== $dtype && 'str' !== $dtype ) {
					/* translators: %s: column name */
					return self::error( 'dap_invalid_filter', sprintf( __( '“contains” works on text columns only; “%s” is not one.', 'distributed-data-analysis' ), $column ) );
				}
				$predicate['value'] = $raw;
				return $predicate;
			default:
				if ( '' === $raw ) {
					return $missing;
				}
				$value = self::typed( $raw, $dtype, $column );
				if ( is_wp_error( $value ) ) {
					return $value;
				}
				$predicate['value'] = $value;
				return $predicate;
		}
	}

	/**
	 * One aggregation row → `{fn[, column][, as]}`.
	 *
	 * @param array      $row    `{fn, column, as}`.
	 * @param string     $fn     Function.
	 * @param array|null $schema Schema.
	 * @param int        $n      Row number for messages.
	 * @return array|WP_Error
	 */
	private static function aggregation( array $row, $fn, $schema, $n ) {
		if ( ! in_array( $fn, self::AGGREGATIONS, true ) ) {
			/* translators: %d: aggregation number */
			return self::error( 'dap_invalid_group_by', sprintf( __( 'Aggregation %d: unknown function.', 'distributed-data-analysis' ), $n ) );
		}
		$agg    = array( 'fn' => $fn );
		$column = self::text( $row, 'column' );
		if ( '' === $column && 'count' !== $fn ) {
			/* translators: 1: aggregation number, 2: function */
			return self::error( 'dap_invalid_group_by', sprintf( __( 'Aggregation %1$d: “%2$s” needs a column.', 'distributed-data-analysis' ), $n, $fn ) );
		}
		if ( '' !== $column ) {
			$known = self::known_column( $column, $schema, __( 'Aggregation', 'distributed-data-analysis' ) );
			if ( is_wp_error( $known ) ) {
				return $known;
			}
			$dtype = self::dtype( $schema, $column );
			if ( null !== $dtype && in_array( $fn, array( 'sum', 'mean', 'median', 'std' ), true ) && ! self::is_numeric_dtype( $dtype ) ) {
				/* translators: 1: function, 2: column name */
				return self::error( 'dap_invalid_group_by', sprintf( __( '“%1$s” needs a numeric column; “%2$s” is not one.', 'distributed-data-analysis' ), $fn, $column ) );
			}
			$agg['column'] = $column;
		}
		$as = self::text( $row, 'as' );
		if ( '' !== $as ) {
			$agg['as'] = $as;
		}
		return $agg;
	}

	/**
	 * Operation 300: `model`, `features`, `target`, `test_fraction`, `seed` and the options of
	 * the chosen model only.
	 *
	 * @param array      $input  Form input.
	 * @param array|null $schema Schema.
	 * @return array|WP_Error
	 */
	public static function model_params( array $input, $schema ) {
		$model = self::text( $input, 'model' );
		if ( ! in_array( $model, self::MODELS, true ) ) {
			return self::error( 'dap_invalid_model', __( 'Choose a model: linear regression, logistic regression, k-means or decision tree.', 'distributed-data-analysis' ) );
		}
		$features = self::columns( $input, 'features', $schema, __( 'Features', 'distributed-data-analysis' ) );
		if ( is_wp_error( $features ) ) {
			return $features;
		}
		if ( ! $features ) {
			return self::error( 'dap_invalid_model', __( 'Choose at least one feature column.', 'distributed-data-analysis' ) );
		}
		foreach ( $features as $feature ) {
			$dtype = self::dtype( $schema, $feature );
			if ( null !== $dtype && ! self::is_numeric_dtype( $dtype ) ) {
				/* translators: %s: column name */
				return self::error( 'dap_invalid_model', sprintf( __( 'Features must be numeric columns; “%s” is not one.', 'distributed-data-analysis' ), $feature ) );
			}
		}
		$params = array(
			'model'    => $model,
			'features' => $features,
		);
		$target = self::text( $input, 'target' );
		if ( '' === $target && 'kmeans' !== $model ) {
			return self::error( 'dap_invalid_model', __( 'Choose the target column.', 'distributed-data-analysis' ) );
		}
		if ( '' !== $target ) {
			$known = self::known_column( $target, $schema, __( 'Target', 'distributed-data-analysis' ) );
			if ( is_wp_error( $known ) ) {
				return $known;
			}
			if ( in_array( $target, $features, true ) ) {
				return self::error( 'dap_invalid_model', __( 'The target cannot also be a feature.', 'distributed-data-analysis' ) );
			}
			$dtype = self::dtype( $schema, $target );
			if ( 'linear_regression' === $model && null !== $dtype && ! self::is_numeric_dtype( $dtype ) ) {
				return self::error( 'dap_invalid_model', __( 'Linear regression needs a numeric target.', 'distributed-data-analysis' ) );
			}
			$params['target'] = $target;
		}

		$fraction = self::text( $input, 'test_fraction' );
		if ( '' !== $fraction ) {
			$f     = is_numeric( $fraction ) ? (float) $fraction : -1.0;
			$lower = 'kmeans' === $model ? 0.0 <= $f : 0.0 < $f;
			if ( ! $lower || $f >= 1.0 ) {
				return self::error(
					'dap_invalid_number',
					'kmeans' === $model
						? __( 'The test fraction must be at least 0 and below 1.', 'distributed-data-analysis' )
						: __( 'The test fraction must be above 0 and below 1.', 'distributed-data-analysis' )
				);
			}
			$params['test_fraction'] = $f;
		}
		$seed = self::integer( $input, 'seed', 0, PHP_INT_MAX );
		if ( is_wp_error( $seed ) ) {
			return $seed;
		}
		if ( null !== $seed ) {
			$params['seed'] = $seed;
		}
		$limits = array(
			'k'              => array( 1, 1000 ),
			'max_depth'      => array( 1, 1000 ),
			'max_iterations' => array( 1, 1000000 ),
		);
		foreach ( self::model_options() as $key => $models ) {
			if ( ! in_array( $model, $models, true ) ) {
				continue; // Not this model's option: the runner would refuse it.
			}
			$n = self::integer( $input, $key, $limits[ $key ][0], $limits[ $key ][1] );
			if ( is_wp_error( $n ) ) {
				return $n;
			}
			if ( null !== $n ) {
				$params[ $key ] = $n;
			}
		}
		return $params;
	}

	/**
	 * Operation 400: `format`, `title` (html only) and optionally 200's row choice.
	 *
	 * @param array      $input  Form input.
	 * @param array|null $schema Schema.
	 * @return array|WP_Error
	 */
	public static function export_params( array $input, $schema ) {
		$format = self::text( $input, 'format' );
		if ( ! in_array( $format, self::FORMATS, true ) ) {
			return self::error( 'dap_invalid_format', __( 'Choose an export format: CSV, Parquet, JSON or HTML.', 'distributed-data-analysis' ) );
		}
		$params = self::filter_params( $input, $schema );
		if ( is_wp_error( $params ) ) {
			return $params;
		}
		$params = array_merge( array( 'format' => $format ), $params );
		$title  = self::text( $input, 'title' );
		if ( 'html' === $format && '' !== $title ) {
			$params['title'] = mb_substr( $title, 0, self::MAX_TITLE );
		}
		return $params;
	}

	/**
	 * Output columns of a completed task, as far as its params tell (for the column pickers when
	 * an earlier task is the input); null when they cannot be told.
	 *
	 * @param array $task     Task from the server (with `operation_code` and `params`).
	 * @param array $datasets Dataset name => column names.
	 * @return string[]|null
	 */
	public static function output_columns( array $task, array $datasets ) {
		$params  = isset( $task['params'] ) && is_array( $task['params'] ) ? $task['params'] : array();
		$dataset = isset( $params['dataset'] ) && is_string( $params['dataset'] ) ? $params['dataset'] : '';
		$base    = $datasets[ $dataset ] ?? null;
		switch ( (int) ( $task['operation_code'] ?? 0 ) ) {
			case 100:
				return ! empty( $params['columns'] ) && is_array( $params['columns'] ) ? array_map( 'strval', $params['columns'] ) : $base;
			case 200:
			case 400:
				if ( ! empty( $params['select'] ) && is_array( $params['select'] ) ) {
					return array_map( 'strval', $params['select'] );
				}
				if ( isset( $params['group_by']['by'] ) && is_array( $params['group_by']['by'] ) ) {
					$names = array_map( 'strval', $params['group_by']['by'] );
					foreach ( (array) ( $params['group_by']['aggregations'] ?? array() ) as $agg ) {
						$agg     = (array) $agg;
						$names[] = (string) ( $agg['as'] ?? ( isset( $agg['column'] ) ? $agg['column'] . '_' . ( $agg['fn'] ?? '' ) : 'count' ) );
					}
					return $names;
				}
				return $base;
			case 300:
				return array( 'row', 'actual', 'predicted' );
			default:
				return null;
		}
	}

	/**
	 * Whether a dtype (as polars prints it) is numeric.
	 *
	 * @param string $dtype dtype.
	 * @return bool
	 */
	public static function is_numeric_dtype( $dtype ) {
		return 1 === preg_match( '/^[iuf](8|16|32|64|128)$/', (string) $dtype );
	}

	/*
	 * ------------------------------------------------------------------ Helpers
	 */

	/**
	 * A sanitised single-line text field ('' when absent or not a string).
	 *
	 * @param array  $input Input.
	 * @param string $key   Key.
	 * @return string
	 */
	private static function text( array $input, $key ) {
		return isset( $input[ $key ] ) && is_scalar( $input[ $key ] ) ? trim( sanitize_text_field( (string) $input[ $key ] ) ) : '';
	}

	/**
	 * The rows of a repeatable part (`where[0][column]` …), in order, capped.
	 *
	 * @param array  $input Input.
	 * @param string $key   Key.
	 * @return array[]
	 */
	private static function rows( array $input, $key ) {
		if ( ! isset( $input[ $key ] ) || ! is_array( $input[ $key ] ) ) {
			return array();
		}
		$rows = array_values( array_filter( $input[ $key ], 'is_array' ) );
		// One more than allowed, so the caller can tell "too many" apart from "exactly the limit".
		return array_slice( $rows, 0, self::MAX_ROWS + 1 );
	}

	/**
	 * A list of column names (multi-select), de-duplicated, each checked against the schema.
	 *
	 * @param array      $input  Input.
	 * @param string     $key    Key.
	 * @param array|null $schema Schema.
	 * @param string     $label  Field label for messages.
	 * @return string[]|WP_Error
	 */
	private static function columns( array $input, $key, $schema, $label ) {
		$raw = $input[ $key ] ?? array();
		if ( is_string( $raw ) ) {
			$raw = explode( ',', $raw );
		}
		$out = array();
		foreach ( (array) $raw as $item ) {
			$name = is_scalar( $item ) ? trim( sanitize_text_field( (string) $item ) ) : '';
			if ( '' === $name || in_array( $name, $out, true ) ) {
				continue;
			}
			$known = self::known_column( $name, $schema, $label );
			if ( is_wp_error( $known ) ) {
				return $known;
			}
			$out[] = $name;
		}
		return $out;
	}

	/**
	 * A column's dtype, or null when it is not known.
	 *
	 * @param array|null $schema Schema.
	 * @param string     $column Column.
	 * @return string|null
	 */
	private static function dtype( $schema, $column ) {
		$dtype = is_array( $schema ) && isset( $schema[ $column ] ) ? (string) $schema[ $column ] : '';
		return '' === $dtype ? null : $dtype;
	}

	/**
	 * An error when the schema is known and lacks the column.
	 *
	 * @param string     $column Column.
	 * @param array|null $schema Schema.
	 * @param string     $label  Field label.
	 * @return true|WP_Error
	 */
	private static function known_column( $column, $schema, $label ) {
		if ( null === $schema || array_key_exists( $column, $schema ) ) {
			return true;
		}
		/* translators: 1: field label, 2: column name */
		return self::error( 'dap_unknown_column', sprintf( __( '%1$s: the dataset has no column “%2$s”.', 'distributed-data-analysis' ), $label, $column ) );
	}

	/**
	 * An optional integer field within bounds (null when blank).
	 *
	 * @param array  $input Input.
	 * @param string $key   Key.
	 * @param int    $min   Lowest.
	 * @param int    $max   Highest.
	 * @return int|null|WP_Error
	 */
	private static function integer( array $input, $key, $min, $max ) {
		$raw = self::text( $input, $key );
		if ( '' === $raw ) {
			return null;
		}
		if ( ! preg_match( '/^\d{1,18}$/', $raw ) || (int) $raw < $min || (int) $raw > $max ) {
			/* translators: 1: field name, 2: lowest value, 3: highest value */
			return self::error( 'dap_invalid_number', sprintf( __( '%1$s must be a whole number from %2$d to %3$d.', 'distributed-data-analysis' ), $key, $min, $max ) );
		}
		return (int) $raw;
	}

	/**
	 * A form value typed for its column: numbers for numeric columns, booleans for bool
	 * columns, text otherwise; by its look when the column's type is unknown.
	 *
	 * @param string      $raw    Value.
	 * @param string|null $dtype  Column dtype.
	 * @param string      $column Column (for messages).
	 * @return int|float|bool|string|WP_Error
	 */
	public static function typed( $raw, $dtype, $column ) {
		if ( null === $dtype || '' === $dtype ) {
			if ( is_numeric( $raw ) ) {
				return false === strpbrk( $raw, '.eE' ) ? (int) $raw : (float) $raw;
			}
			return $raw;
		}
		if ( self::is_numeric_dtype( $dtype ) ) {
			if ( ! is_numeric( $raw ) ) {
				/* translators: 1: column name, 2: value */
				return self::error( 'dap_invalid_filter', sprintf( __( '“%1$s” holds numbers; “%2$s” is not one.', 'distributed-data-analysis' ), $column, $raw ) );
			}
			return ( 'f' !== $dtype[0] && false === strpbrk( $raw, '.eE' ) ) ? (int) $raw : (float) $raw;
		}
		if ( 'bool' === $dtype ) {
			$lower = strtolower( $raw );
			if ( ! in_array( $lower, array( 'true', 'false' ), true ) ) {
				/* translators: %s: column name */
				return self::error( 'dap_invalid_filter', sprintf( __( '“%s” holds true/false values.', 'distributed-data-analysis' ), $column ) );
			}
			return 'true' === $lower;
		}
		return $raw;
	}

	/**
	 * A WP_Error with status 400 (the form was wrong).
	 *
	 * @param string $code    Code.
	 * @param string $message Message.
	 * @return WP_Error
	 */
	private static function error( $code, $message ) {
		return new WP_Error( $code, $message, array( 'status' => 400 ) );
	}
}
