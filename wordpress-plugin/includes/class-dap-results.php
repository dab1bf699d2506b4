<?php
/**
 * Result view parts beyond the table and chart: model metrics, the export summary, the 400 HTML
 * report embedded in a sandboxed iframe, and artifact downloads.
 *
 * @package DistributedDataAnalysis
 */

defined( 'ABSPATH' ) || exit;

/**
 * Renders a 300 result's metrics and parameters and a 400 result's summary as tables, and owns
 * two admin-post handlers (capability dap_view_results + a nonce bound to the task):
 * - `dap_report` fetches the task's `report.html` from the server with the API key (in PHP) and
 *   serves it under a CSP sandbox, for the iframe of the result view;
 * - `dap_artifact` mints a short-lived signed download URL on the server and redirects to it,
 *   so a download link in the page keeps working as long as its nonce does.
 * The API key never reaches the browser: the page only holds links to these handlers.
 */
class DAP_Results {

	const REPORT = 'report.html';
	/** Lifetime of the signed URL a download redirects to (seconds). */
	const DOWNLOAD_TTL = 120;

	/**
	 * Hooks.
	 */
	public function init() {
		add_action( 'admin_post_dap_report', array( $this, 'handle_report' ) );
		add_action( 'admin_post_dap_artifact', array( $this, 'handle_artifact' ) );
	}

	/**
	 * Link to download an artifact through WordPress.
	 *
	 * @param string $task_id Task id.
	 * @param string $name    Artifact name.
	 * @return string
	 */
	public static function artifact_link( $task_id, $name ) {
		return wp_nonce_url(
			add_query_arg(
				array(
					'action'  => 'dap_artifact',
					'task_id' => rawurlencode( $task_id ),
					'name'    => rawurlencode( $name ),
				),
				admin_url( 'admin-post.php' )
			),
			'dap_artifact_' . $task_id
		);
	}

	/**
	 * URL of a task's HTML report, served by WordPress for the iframe.
	 *
	 * @param string $task_id Task id.
	 * @return string
	 */
	public static function report_link( $task_id ) {
		return wp_nonce_url(
			add_query_arg(
				array(
					'action'  => 'dap_report',
					'task_id' => rawurlencode( $task_id ),
				),
				admin_url( 'admin-post.php' )
			),
			'dap_report_' . $task_id
		);
	}

	/*
	 * ------------------------------------------------------------------ Rendering
	 */

	/**
	 * Everything of a completed task's result that is not rows: metrics (300), summary and
	 * report (400), artifacts.
	 *
	 * @param string $task_id   Task id.
	 * @param int    $code      Operation code.
	 * @param array  $data      result_data.
	 * @param array  $artifacts Artifacts `[{name, size, content_type}]`.
	 */
	public static function render( $task_id, $code, array $data, array $artifacts ) {
		if ( 300 === $code || isset( $data['metrics'] ) ) {
			self::render_model( $data );
		}
		if ( 400 === $code ) {
			self::render_export( $task_id, $data, $artifacts );
		}
		self::render_artifacts( $task_id, $artifacts );
	}

	/**
	 * A 300 result: the fit, the metrics, the per-class scores and confusion matrix, the
	 * parameters (coefficients, feature importances, centroids).
	 *
	 * @param array $data result_data.
	 */
	public static function render_model( array $data ) {
		$metrics    = isset( $data['metrics'] ) && is_array( $data['metrics'] ) ? $data['metrics'] : array();
		$parameters = isset( $data['parameters'] ) && is_array( $data['parameters'] ) ? $data['parameters'] : array();

		echo '<h2>' . esc_html__( 'Model', 'distributed-data-analysis' ) . '</h2>';
		$fit = array(
			__( 'Model', 'distributed-data-analysis' )         => $data['model'] ?? null,
			__( 'Dataset', 'distributed-data-analysis' )       => $data['dataset'] ?? null,
			__( 'Features', 'distributed-data-analysis' )      => isset( $data['features'] ) ? implode( ', ', array_map( 'strval', (array) $data['features'] ) ) : null,
			__( 'Target', 'distributed-data-analysis' )        => $data['target'] ?? null,
			__( 'Training rows', 'distributed-data-analysis' ) => $data['n_train'] ?? null,
			__( 'Test rows', 'distributed-data-analysis' )     => $data['n_test'] ?? null,
			__( 'Dropped rows', 'distributed-data-analysis' )  => $data['dropped_rows'] ?? null,
			__( 'Test fraction', 'distributed-data-analysis' ) => $data['test_fraction'] ?? null,
			__( 'Seed', 'distributed-data-analysis' )          => $data['seed'] ?? null,
		);
		self::key_value_table( 'dap-model-summary', $fit );

		$labels = array(
			'r2'         => __( 'R²', 'distributed-data-analysis' ),
			'rmse'       => __( 'RMSE', 'distributed-data-analysis' ),
			'mae'        => __( 'MAE', 'distributed-data-analysis' ),
			'accuracy'   => __( 'Accuracy', 'distributed-data-analysis' ),
			'precision'  => __( 'Precision (macro)', 'distributed-data-analysis' ),
			'recall'     => __( 'Recall (macro)', 'distributed-data-analysis' ),
			'f1'         => __( 'F1 (macro)', 'distributed-data-analysis' ),
			'inertia'    => __( 'Inertia', 'distributed-data-analysis' ),
			'silhouette' => __( 'Silhouette', 'distributed-data-analysis' ),
		);
		$shown  = array_intersect_key( $labels, $metrics );
		if ( $shown ) {
			echo '<h3>' . esc_html__( 'Metrics', 'distributed-data-analysis' ) . '</h3>';
			echo '<table class="widefat striped dap-metrics"><tbody>';
			foreach ( $shown as $key => $label ) {
				printf( '<tr data-metric="%1$s"><th scope="row">%2$s</th><td>%3$s</td></tr>', esc_attr( $key ), esc_html( $label ), esc_html( self::number( $metrics[ $key ] ) ) );
			}
			echo '</tbody></table>';
		}

		if ( ! empty( $metrics['per_class'] ) && is_array( $metrics['per_class'] ) ) {
			echo '<h3>' . esc_html__( 'Per class', 'distributed-data-analysis' ) . '</h3>';
			$rows = array();
			foreach ( $metrics['per_class'] as $c ) {
				$c      = (array) $c;
				$rows[] = array( self::label( $c['label'] ?? '' ), self::number( $c['precision'] ?? null ), self::number( $c['recall'] ?? null ), self::number( $c['f1'] ?? null ), self::number( $c['support'] ?? null ) );
			}
			self::table( 'dap-per-class', array( __( 'Class', 'distributed-data-analysis' ), __( 'Precision', 'distributed-data-analysis' ), __( 'Recall', 'distributed-data-analysis' ), __( 'F1', 'distributed-data-analysis' ), __( 'Support', 'distributed-data-analysis' ) ), $rows );
		}

		if ( isset( $metrics['confusion_matrix']['labels'], $metrics['confusion_matrix']['matrix'] ) && is_array( $metrics['confusion_matrix']['matrix'] ) ) {
			$class_labels = array_map( array( __CLASS__, 'label' ), (array) $metrics['confusion_matrix']['labels'] );
			echo '<h3>' . esc_html__( 'Confusion matrix', 'distributed-data-analysis' ) . '</h3>';
			echo '<p class="description">' . esc_html__( 'Rows: actual class; columns: predicted class.', 'distributed-data-analysis' ) . '</p>';
			$rows = array();
			foreach ( array_values( $metrics['confusion_matrix']['matrix'] ) as $i => $counts ) {
				$rows[] = array_merge( array( $class_labels[ $i ] ?? (string) $i ), array_map( array( __CLASS__, 'number' ), (array) $counts ) );
			}
			self::table( 'dap-confusion', array_merge( array( __( 'actual \\ predicted', 'distributed-data-analysis' ) ), $class_labels ), $rows, true );
		}

		if ( isset( $parameters['coefficients'] ) && is_array( $parameters['coefficients'] ) ) {
			echo '<h3>' . esc_html__( 'Coefficients', 'distributed-data-analysis' ) . '</h3>';
			$rows = array();
			foreach ( self::in_feature_order( $parameters['coefficients'], $data ) as $feature => $weight ) {
				$rows[] = array( (string) $feature, self::number( $weight ) );
			}
			if ( array_key_exists( 'intercept', $parameters ) ) {
				$rows[] = array( __( '(intercept)', 'distributed-data-analysis' ), self::number( $parameters['intercept'] ) );
			}
			self::table( 'dap-coefficients', array( __( 'Feature', 'distributed-data-analysis' ), __( 'Coefficient', 'distributed-data-analysis' ) ), $rows, true );
		}
		if ( ! empty( $parameters['per_class'] ) && is_array( $parameters['per_class'] ) ) {
			echo '<h3>' . esc_html__( 'Coefficients per class', 'distributed-data-analysis' ) . '</h3>';
			$features = array_map( 'strval', (array) ( $data['features'] ?? array() ) );
			$rows     = array();
			foreach ( $parameters['per_class'] as $c ) {
				$c   = (array) $c;
				$row = array( self::label( $c['class'] ?? '' ) );
				foreach ( $features as $feature ) {
					$row[] = self::number( $c['coefficients'][ $feature ] ?? null );
				}
				$row[]  = self::number( $c['intercept'] ?? null );
				$rows[] = $row;
			}
			self::table( 'dap-coefficients', array_merge( array( __( 'Class', 'distributed-data-analysis' ) ), $features, array( __( '(intercept)', 'distributed-data-analysis' ) ) ), $rows, true );
		}
		if ( isset( $parameters['feature_importances'] ) && is_array( $parameters['feature_importances'] ) ) {
			echo '<h3>' . esc_html__( 'Feature importances', 'distributed-data-analysis' ) . '</h3>';
			$rows = array();
			foreach ( self::in_feature_order( $parameters['feature_importances'], $data ) as $feature => $importance ) {
				$rows[] = array( (string) $feature, self::number( $importance ) );
			}
			self::table( 'dap-importances', array( __( 'Feature', 'distributed-data-analysis' ), __( 'Importance', 'distributed-data-analysis' ) ), $rows, true );
			self::key_value_table(
				'dap-tree',
				array(
					__( 'Depth', 'distributed-data-analysis' )  => $parameters['depth'] ?? null,
					__( 'Leaves', 'distributed-data-analysis' ) => $parameters['leaves'] ?? null,
				)
			);
		}
		if ( ! empty( $parameters['centroids'] ) && is_array( $parameters['centroids'] ) ) {
			echo '<h3>' . esc_html__( 'Clusters', 'distributed-data-analysis' ) . '</h3>';
			$features = array_map( 'strval', (array) ( $data['features'] ?? array() ) );
			$sizes    = isset( $metrics['cluster_sizes'] ) && is_array( $metrics['cluster_sizes'] ) ? array_values( $metrics['cluster_sizes'] ) : array();
			$rows     = array();
			foreach ( array_values( $parameters['centroids'] ) as $i => $centroid ) {
				$row = array( (string) $i, self::number( $sizes[ $i ] ?? null ) );
				foreach ( $features as $feature ) {
					$row[] = self::number( ( (array) $centroid )[ $feature ] ?? null );
				}
				$rows[] = $row;
			}
			self::table( 'dap-centroids', array_merge( array( __( 'Cluster', 'distributed-data-analysis' ), __( 'Rows', 'distributed-data-analysis' ) ), $features ), $rows, true );
		}
	}

	/**
	 * A 400 result: what was written, the per-column summary, and the HTML report embedded.
	 *
	 * @param string $task_id   Task id.
	 * @param array  $data      result_data.
	 * @param array  $artifacts Artifacts.
	 */
	public static function render_export( $task_id, array $data, array $artifacts ) {
		echo '<h2>' . esc_html__( 'Export', 'distributed-data-analysis' ) . '</h2>';
		self::key_value_table(
			'dap-export',
			array(
				__( 'Dataset', 'distributed-data-analysis' ) => $data['dataset'] ?? null,
				__( 'Format', 'distributed-data-analysis' )  => $data['format'] ?? null,
				__( 'Title', 'distributed-data-analysis' )   => $data['title'] ?? null,
				__( 'Rows', 'distributed-data-analysis' )    => $data['row_count'] ?? null,
				__( 'File', 'distributed-data-analysis' )    => $data['artifact'] ?? null,
			)
		);
		if ( ! empty( $data['summary'] ) && is_array( $data['summary'] ) ) {
			echo '<h3>' . esc_html__( 'Summary', 'distributed-data-analysis' ) . '</h3>';
			$keys = array( 'count', 'null_count', 'mean', 'std', 'min', '50%', 'max', 'unique', 'top', 'freq' );
			$rows = array();
			foreach ( $data['summary'] as $column ) {
				$column = (array) $column;
				$row    = array( (string) ( $column['column'] ?? '' ), (string) ( $column['dtype'] ?? '' ) );
				foreach ( $keys as $key ) {
					$row[] = array_key_exists( $key, $column ) ? self::number( $column[ $key ] ) : '';
				}
				$rows[] = $row;
			}
			self::table( 'dap-summary', array( __( 'Column', 'distributed-data-analysis' ), __( 'Type', 'distributed-data-analysis' ), __( 'Count', 'distributed-data-analysis' ), __( 'Nulls', 'distributed-data-analysis' ), __( 'Mean', 'distributed-data-analysis' ), __( 'Std', 'distributed-data-analysis' ), __( 'Min', 'distributed-data-analysis' ), __( 'Median', 'distributed-data-analysis' ), __( 'Max', 'distributed-data-analysis' ), __( 'Unique', 'distributed-data-analysis' ), __( 'Most frequent', 'distributed-data-analysis' ), __( 'Frequency', 'distributed-data-analysis' ) ), $rows, true );
		}
		if ( in_array( self::REPORT, wp_list_pluck( $artifacts, 'name' ), true ) ) {
			echo '<h3>' . esc_html__( 'Report', 'distributed-data-analysis' ) . '</h3>';
			// No allow-scripts, no allow-same-origin: the report runs nothing and cannot reach wp-admin.
			printf(
				'<iframe class="dap-report" sandbox="" referrerpolicy="no-referrer" src="%1$s" title="%2$s"></iframe>',
				esc_url( self::report_link( $task_id ) ),
				esc_attr__( 'HTML report', 'distributed-data-analysis' )
			);
		}
	}

	/**
	 * Download links (through the dap_artifact handler).
	 *
	 * @param string $task_id   Task id.
	 * @param array  $artifacts Artifacts.
	 */
	public static function render_artifacts( $task_id, array $artifacts ) {
		if ( ! $artifacts ) {
			return;
		}
		echo '<h2>' . esc_html__( 'Artifacts', 'distributed-data-analysis' ) . '</h2><ul class="dap-artifacts">';
		foreach ( $artifacts as $artifact ) {
			$name = (string) ( $artifact['name'] ?? '' );
			printf( '<li><a href="%1$s" data-dap-artifact="%2$s">%3$s</a> (%4$s)</li>', esc_url( self::artifact_link( $task_id, $name ) ), esc_attr( $name ), esc_html( $name ), esc_html( size_format( (int) ( $artifact['size'] ?? 0 ) ) ) );
		}
		echo '</ul>';
	}

	/**
	 * A feature => value map in the order of the result's `features` (the server's JSON sorts
	 * object keys), with any other keys after them.
	 *
	 * @param array $map  Feature => value.
	 * @param array $data result_data.
	 * @return array
	 */
	private static function in_feature_order( array $map, array $data ) {
		$ordered = array();
		foreach ( (array) ( $data['features'] ?? array() ) as $feature ) {
			if ( is_scalar( $feature ) && array_key_exists( (string) $feature, $map ) ) {
				$ordered[ (string) $feature ] = $map[ (string) $feature ];
			}
		}
		return $ordered + $map;
	}

	/**
	 * A number for display (4 decimals for fractions), '—' for null.
	 *
	 * @param mixed $value Value.
	 * @return string
	 */
	public static function number( $value ) {
		if ( null === $value ) {
			return '—';
		}
		if ( is_float( $value ) ) {
			return (string) round( $value, 4 );
		}
		return is_scalar( $value ) ? ( is_bool( $value ) ? ( $value ? 'true' : 'false' ) : (string) $value ) : (string) wp_json_encode( $value );
	}

	/**
	 * A class label (labels keep their JSON type) as text.
	 *
	 * @param mixed $value Label.
	 * @return string
	 */
	public static function label( $value ) {
		return self::number( $value );
	}

	/**
	 * A table with a header row; every cell escaped.
	 *
	 * @param string     $class      Table class.
	 * @param string[]   $headings   Header cells.
	 * @param string[][] $rows       Body cells.
	 * @param bool       $row_header First cell of each row is a header.
	 */
	private static function table( $class, array $headings, array $rows, $row_header = false ) {
		echo '<table class="widefat striped ' . esc_attr( $class ) . '"><thead><tr>';
		foreach ( $headings as $heading ) {
			echo '<th scope="col">' . esc_html( (string) $heading ) . '</th>';
		}
		echo '</tr></thead><tbody>';
		foreach ( $rows as $row ) {
			echo '<tr>';
			foreach ( array_values( $row ) as $i => $cell ) {
				echo ( 0 === $i && $row_header ) ? '<th scope="row">' . esc_html( (string) $cell ) . '</th>' : '<td>' . esc_html( (string) $cell ) . '</td>';
			}
			echo '</tr>';
		}
		echo '</tbody></table>';
	}

	/**
	 * Label → value rows, skipping nulls.
	 *
	 * @param string $class Table class.
	 * @param array  $pairs Label => value.
	 */
	private static function key_value_table( $class, array $pairs ) {
		echo '<table class="widefat ' . esc_attr( $class ) . '"><tbody>';
		foreach ( $pairs as $label => $value ) {
			if ( null === $value || '' === $value ) {
				continue;
			}
			printf( '<tr><th scope="row">%1$s</th><td>%2$s</td></tr>', esc_html( (string) $label ), esc_html( self::number( $value ) ) );
		}
		echo '</tbody></table>';
	}

	/*
	 * ------------------------------------------------------------------ Handlers
	 */

	/**
	 * The task id of a handler request after the capability and nonce checks (dies otherwise).
	 *
	 * @param string $action Nonce action prefix.
	 * @return string
	 */
	private static function checked_task_id( $action ) {
		if ( ! current_user_can( DAP_Capabilities::VIEW_RESULTS ) ) {
			wp_die( esc_html__( 'You are not allowed to view Data Analysis results.', 'distributed-data-analysis' ), '', array( 'response' => 403 ) );
		}
		$task_id = isset( $_GET['task_id'] ) ? sanitize_text_field( wp_unslash( $_GET['task_id'] ) ) : '';
		$nonce   = isset( $_GET['_wpnonce'] ) ? sanitize_text_field( wp_unslash( $_GET['_wpnonce'] ) ) : '';
		if ( '' === $task_id || ! wp_verify_nonce( $nonce, $action . '_' . $task_id ) ) {
			wp_die( esc_html__( 'The link has expired. Reload the result view and try again.', 'distributed-data-analysis' ), '', array( 'response' => 403 ) );
		}
		return $task_id;
	}

	/**
	 * The report page for the iframe: headers and body, or the error to show.
	 *
	 * @param string $task_id Task id.
	 * @return array|WP_Error `{headers, body}`.
	 */
	public static function report_response( $task_id ) {
		$res = DAP_Client::from_settings()->get_artifact( $task_id, self::REPORT );
		if ( is_wp_error( $res ) ) {
			return $res;
		}
		return array(
			'headers' => array(
				'Content-Type'            => 'text/html; charset=utf-8',
				// Whatever the report holds, it runs no script, loads nothing and has no origin.
				'Content-Security-Policy' => "sandbox; default-src 'none'; style-src 'unsafe-inline'; img-src data:",
				'X-Content-Type-Options'  => 'nosniff',
				'X-Frame-Options'         => 'SAMEORIGIN',
				'Referrer-Policy'         => 'no-referrer',
				'Cache-Control'           => 'private, no-store',
			),
			'body'    => $res['body'],
		);
	}

	/**
	 * Admin-post `dap_report`: serve the task's HTML report.
	 */
	public function handle_report() {
		$task_id = self::checked_task_id( 'dap_report' );
		$res     = self::report_response( $task_id );
		if ( is_wp_error( $res ) ) {
			wp_die( esc_html( DAP_Admin::describe_error( $res ) ), '', array( 'response' => 502 ) );
		}
		if ( ! headers_sent() ) {
			foreach ( $res['headers'] as $name => $value ) {
				header( $name . ': ' . $value );
			}
		}
		echo $res['body']; // phpcs:ignore WordPress.Security.EscapeOutput.OutputNotEscaped -- a complete HTML document, served sandboxed by the CSP above.
		// admin-post.php prints nothing after its action, so the response ends here.
	}

	/**
	 * Where a download goes: a freshly signed URL on the server.
	 *
	 * @param string $task_id Task id.
	 * @param string $name    Artifact name.
	 * @return string|WP_Error
	 */
	public static function download_url( $task_id, $name ) {
		if ( ! preg_match( '/^[A-Za-z0-9_][A-Za-z0-9_.-]{0,99}$/', $name ) ) {
			return new WP_Error( 'dap_invalid_artifact', __( 'That is not an artifact name.', 'distributed-data-analysis' ), array( 'status' => 400 ) );
		}
		return DAP_Client::from_settings()->artifact_url( $task_id, $name, self::DOWNLOAD_TTL );
	}

	/**
	 * Admin-post `dap_artifact`: redirect to a short-lived signed download URL.
	 */
	public function handle_artifact() {
		$task_id = self::checked_task_id( 'dap_artifact' );
		$name    = isset( $_GET['name'] ) ? sanitize_text_field( wp_unslash( $_GET['name'] ) ) : ''; // phpcs:ignore WordPress.Security.NonceVerification.Recommended -- checked in checked_task_id().
		$url     = self::download_url( $task_id, $name );
		if ( is_wp_error( $url ) ) {
			wp_die( esc_html( DAP_Admin::describe_error( $url ) ), '', array( 'response' => 'dap_invalid_artifact' === $url->get_error_code() ? 400 : 502 ) );
		}
		$host = wp_parse_url( $url, PHP_URL_HOST );
		add_filter(
			'allowed_redirect_hosts',
			static function ( $hosts ) use ( $host ) {
				$hosts[] = $host;
				return $hosts;
			}
		);
		wp_safe_redirect( $url, 302, 'distributed-data-analysis' );
		exit;
	}
}
