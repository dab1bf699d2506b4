<?php
/**
 * The Data Analysis admin menu: Tasks (live), New task, Runners, result view, settings page.
 *
 * @package DistributedDataAnalysis
 */

defined( 'ABSPATH' ) || exit;

/**
 * Renders the admin pages and handles their forms (admin-post) and the Test connection AJAX call.
 * Every handler checks a capability and a nonce before it does anything.
 */
class DAP_Admin {

	const STATUSES = array( 'queued', 'assigned', 'running', 'completed', 'failed', 'cancelled' );
	const PER_PAGE = 20;

	/**
	 * Hook suffixes of our pages (for enqueueing assets only there).
	 *
	 * @var string[]
	 */
	private $hooks = array();

	/**
	 * Hooks.
	 */
	public function init() {
		add_action( 'admin_menu', array( $this, 'register_menu' ) );
		add_action( 'admin_enqueue_scripts', array( $this, 'enqueue' ) );
		add_action( 'admin_post_dap_create_task', array( $this, 'handle_create_task' ) );
		add_action( 'admin_post_dap_cancel_task', array( $this, 'handle_cancel_task' ) );
		add_action( 'admin_post_dap_retry_task', array( $this, 'handle_retry_task' ) );
		add_action( 'wp_ajax_dap_test_connection', array( $this, 'ajax_test_connection' ) );
	}

	/**
	 * URL of a task's result view.
	 *
	 * @param string $task_id Task id.
	 * @return string
	 */
	public static function result_url( $task_id ) {
		return add_query_arg(
			array(
				'page'    => 'dap-tasks',
				'task_id' => rawurlencode( $task_id ),
			),
			admin_url( 'admin.php' )
		);
	}

	/**
	 * Menu and settings page.
	 */
	public function register_menu() {
		$this->hooks['tasks'] = add_menu_page(
			__( 'Data Analysis', 'distributed-data-analysis' ),
			__( 'Data Analysis', 'distributed-data-analysis' ),
			DAP_Capabilities::VIEW_RESULTS,
			'dap-tasks',
			array( $this, 'render_tasks_page' ),
			'dashicons-chart-bar',
			58
		);
		add_submenu_page( 'dap-tasks', __( 'Tasks', 'distributed-data-analysis' ), __( 'Tasks', 'distributed-data-analysis' ), DAP_Capabilities::VIEW_RESULTS, 'dap-tasks', array( $this, 'render_tasks_page' ) );
		$this->hooks['new'] = add_submenu_page( 'dap-tasks', __( 'New task', 'distributed-data-analysis' ), __( 'New task', 'distributed-data-analysis' ), DAP_Capabilities::CREATE_TASKS, 'dap-new-task', array( $this, 'render_new_task_page' ) );
		$this->hooks['runners'] = add_submenu_page( 'dap-tasks', __( 'Runners', 'distributed-data-analysis' ), __( 'Runners', 'distributed-data-analysis' ), DAP_Capabilities::VIEW_RESULTS, 'dap-runners', array( $this, 'render_runners_page' ) );
		$this->hooks['settings'] = add_options_page( __( 'Data Analysis', 'distributed-data-analysis' ), __( 'Data Analysis', 'distributed-data-analysis' ), DAP_Capabilities::MANAGE_SETTINGS, DAP_Settings::PAGE, array( $this, 'render_settings_page' ) );
	}

	/**
	 * Assets for our pages. Config reaches JS through wp_localize_script and never holds the API key.
	 *
	 * @param string $hook_suffix Current admin page.
	 */
	public function enqueue( $hook_suffix ) {
		if ( ! in_array( $hook_suffix, $this->hooks, true ) ) {
			return;
		}
		wp_enqueue_style( 'dap-admin', DAP_PLUGIN_URL . 'assets/css/dap-admin.css', array(), DAP_PLUGIN_VERSION );
		if ( ( $this->hooks['settings'] ?? null ) === $hook_suffix ) {
			wp_enqueue_script( 'dap-settings', DAP_PLUGIN_URL . 'assets/js/dap-settings.js', array(), DAP_PLUGIN_VERSION, true );
			wp_localize_script( 'dap-settings', 'dapSettings', self::settings_script_config() );
			return;
		}
		wp_enqueue_script( 'dap-live', DAP_PLUGIN_URL . 'assets/js/dap-live.js', array(), DAP_PLUGIN_VERSION, true );
		wp_localize_script( 'dap-live', 'dapLive', self::live_script_config() );
		if ( ( $this->hooks['new'] ?? null ) === $hook_suffix ) {
			wp_enqueue_script( 'dap-task-form', DAP_PLUGIN_URL . 'assets/js/dap-task-form.js', array(), DAP_PLUGIN_VERSION, true );
		}
	}

	/**
	 * What the live-progress script needs: where to get a ticket and where the feed is.
	 *
	 * @return array
	 */
	public static function live_script_config() {
		return array(
			'serverUrl' => DAP_Settings::server_url(),
			'ticketUrl' => rest_url( DAP_Rest::NAMESPACE . '/sse-ticket' ),
			'restNonce' => wp_create_nonce( 'wp_rest' ),
			'resultUrl' => self::result_url( '' ),
			'i18n'      => array(
				'live'         => __( 'Live', 'distributed-data-analysis' ),
				'connecting'   => __( 'Connecting…', 'distributed-data-analysis' ),
				'reconnecting' => __( 'Connection lost, reconnecting…', 'distributed-data-analysis' ),
				'noTicket'     => __( 'Live updates unavailable: could not get a ticket from WordPress.', 'distributed-data-analysis' ),
			),
		);
	}

	/**
	 * What the settings script needs.
	 *
	 * @return array
	 */
	public static function settings_script_config() {
		return array(
			'ajaxUrl' => admin_url( 'admin-ajax.php' ),
			'nonce'   => wp_create_nonce( 'dap_test_connection' ),
			'i18n'    => array(
				'testing' => __( 'Testing…', 'distributed-data-analysis' ),
				'failed'  => __( 'The test could not run.', 'distributed-data-analysis' ),
			),
		);
	}

	/*
	 * ------------------------------------------------------------------ Pages
	 */

	/**
	 * Settings → Data Analysis.
	 */
	public function render_settings_page() {
		if ( ! current_user_can( DAP_Capabilities::MANAGE_SETTINGS ) ) {
			wp_die( esc_html__( 'You are not allowed to manage Data Analysis settings.', 'distributed-data-analysis' ), 403 );
		}
		echo '<div class="wrap"><h1>' . esc_html__( 'Data Analysis', 'distributed-data-analysis' ) . '</h1>';
		echo '<form method="post" action="' . esc_url( admin_url( 'options.php' ) ) . '">';
		settings_fields( DAP_Settings::GROUP );
		do_settings_sections( DAP_Settings::PAGE );
		submit_button();
		echo '</form>';
		echo '<h2>' . esc_html__( 'Connection', 'distributed-data-analysis' ) . '</h2>';
		echo '<p><button type="button" class="button" id="dap-test-connection">' . esc_html__( 'Test connection', 'distributed-data-analysis' ) . '</button></p>';
		echo '<div id="dap-test-result" aria-live="polite"></div>';
		DAP_Roles::render_form();
		echo '</div>';
	}

	/**
	 * Tasks page (or a task's result view when `task_id` is given).
	 */
	public function render_tasks_page() {
		if ( ! current_user_can( DAP_Capabilities::VIEW_RESULTS ) ) {
			wp_die( esc_html__( 'You are not allowed to view Data Analysis results.', 'distributed-data-analysis' ), 403 );
		}
		// phpcs:disable WordPress.Security.NonceVerification.Recommended -- read-only view arguments.
		$task_id = isset( $_GET['task_id'] ) ? sanitize_text_field( wp_unslash( $_GET['task_id'] ) ) : '';
		if ( '' !== $task_id ) {
			$this->render_result_view( $task_id );
			return;
		}
		$status = isset( $_GET['status'] ) ? sanitize_key( wp_unslash( $_GET['status'] ) ) : '';
		$paged  = isset( $_GET['paged'] ) ? max( 1, absint( $_GET['paged'] ) ) : 1;
		// phpcs:enable
		if ( ! in_array( $status, self::STATUSES, true ) ) {
			$status = '';
		}

		echo '<div class="wrap"><h1 class="wp-heading-inline">' . esc_html__( 'Tasks', 'distributed-data-analysis' ) . '</h1>';
		if ( current_user_can( DAP_Capabilities::CREATE_TASKS ) ) {
			echo ' <a class="page-title-action" href="' . esc_url( admin_url( 'admin.php?page=dap-new-task' ) ) . '">' . esc_html__( 'New task', 'distributed-data-analysis' ) . '</a>';
		}
		echo ' <span class="dap-live-state" data-dap-live-state></span><hr class="wp-header-end" />';
		$this->render_flash();

		$links = array( '' => __( 'All', 'distributed-data-analysis' ) );
		foreach ( self::STATUSES as $s ) {
			$links[ $s ] = self::status_label( $s );
		}
		echo '<ul class="subsubsub">';
		$items = array();
		foreach ( $links as $key => $label ) {
			$url     = '' === $key ? admin_url( 'admin.php?page=dap-tasks' ) : add_query_arg( 'status', $key, admin_url( 'admin.php?page=dap-tasks' ) );
			$items[] = sprintf( '<li><a href="%1$s"%2$s>%3$s</a></li>', esc_url( $url ), $key === $status ? ' class="current" aria-current="page"' : '', esc_html( $label ) );
		}
		echo implode( ' | ', $items ); // phpcs:ignore WordPress.Security.EscapeOutput.OutputNotEscaped -- built from escaped parts.
		echo '</ul><br class="clear" />';

		$res = DAP_Client::from_settings()->list_tasks(
			array(
				'status' => $status,
				'limit'  => self::PER_PAGE,
				'offset' => ( $paged - 1 ) * self::PER_PAGE,
			)
		);
		if ( is_wp_error( $res ) ) {
			self::print_error( $res );
			echo '</div>';
			return;
		}
		$tasks = isset( $res['tasks'] ) && is_array( $res['tasks'] ) ? $res['tasks'] : array();
		$total = (int) ( $res['total'] ?? count( $tasks ) );

		echo '<table class="wp-list-table widefat fixed striped dap-tasks"><thead><tr>';
		foreach ( array(
			__( 'Task', 'distributed-data-analysis' ),
			__( 'Operation', 'distributed-data-analysis' ),
			__( 'Status', 'distributed-data-analysis' ),
			__( 'Progress', 'distributed-data-analysis' ),
			__( 'Stage', 'distributed-data-analysis' ),
			__( 'Runner', 'distributed-data-analysis' ),
			__( 'Created', 'distributed-data-analysis' ),
			__( 'Actions', 'distributed-data-analysis' ),
		) as $heading ) {
			echo '<th scope="col">' . esc_html( $heading ) . '</th>';
		}
		// New tasks are inserted live only where they belong: the first, unfiltered page.
		printf( '</tr></thead><tbody data-dap-tasks data-dap-insert="%d">', ( 1 === $paged && '' === $status ) ? 1 : 0 );
		if ( ! $tasks ) {
			echo '<tr class="no-items"><td colspan="8">' . esc_html__( 'No tasks yet.', 'distributed-data-analysis' ) . '</td></tr>';
		}
		foreach ( $tasks as $task ) {
			$this->render_task_row( $task );
		}
		echo '</tbody></table>';
		$this->render_pagination( $total, $paged, $status );
		echo '</div>';
	}

	/**
	 * One row of the tasks table; the data attributes are what the live script updates.
	 *
	 * @param array $task Task from the server.
	 */
	private function render_task_row( array $task ) {
		$id       = (string) ( $task['task_id'] ?? '' );
		$status   = (string) ( $task['status'] ?? '' );
		$progress = max( 0, min( 100, (int) ( $task['progress'] ?? 0 ) ) );
		printf( '<tr data-task-id="%1$s" data-status="%2$s">', esc_attr( $id ), esc_attr( $status ) );
		printf( '<td><a href="%1$s"><code>%2$s</code></a></td>', esc_url( self::result_url( $id ) ), esc_html( $id ) );
		printf( '<td>%1$s %2$s</td>', esc_html( (string) ( $task['operation_code'] ?? '' ) ), esc_html( (string) ( $task['operation'] ?? '' ) ) );
		printf( '<td><span class="dap-status dap-status-%1$s" data-dap-status>%2$s</span></td>', esc_attr( $status ), esc_html( self::status_label( $status ) ) );
		echo '<td>';
		self::progress_bar( $progress );
		echo '</td>';
		printf( '<td data-dap-stage>%s</td>', esc_html( (string) ( $task['stage'] ?? '' ) ) );
		printf( '<td data-dap-runner><code>%s</code></td>', esc_html( (string) ( $task['runner_id'] ?? '' ) ) );
		printf( '<td>%s</td>', esc_html( (string) ( $task['created_at'] ?? '' ) ) );
		echo '<td>';
		if ( current_user_can( DAP_Capabilities::CREATE_TASKS ) && in_array( $status, array( 'queued', 'assigned', 'running' ), true ) ) {
			self::action_form( 'dap_cancel_task', $id, __( 'Cancel', 'distributed-data-analysis' ), 'data-dap-cancel' );
		}
		if ( current_user_can( DAP_Capabilities::CREATE_TASKS ) && in_array( $status, array( 'failed', 'cancelled' ), true ) ) {
			self::action_form( 'dap_retry_task', $id, __( 'Retry', 'distributed-data-analysis' ), 'data-dap-retry' );
		}
		echo '</td></tr>';
	}

	/**
	 * A one-button admin-post form for a task, with a nonce bound to the action and the task.
	 *
	 * @param string $action    admin-post action (also the nonce action prefix).
	 * @param string $task_id   Task id.
	 * @param string $label     Button label.
	 * @param string $attribute Marker attribute for the live script.
	 */
	private static function action_form( $action, $task_id, $label, $attribute ) {
		printf(
			'<form method="post" action="%1$s" %2$s><input type="hidden" name="action" value="%3$s" /><input type="hidden" name="task_id" value="%4$s" />%5$s<button type="submit" class="button button-small">%6$s</button></form>',
			esc_url( admin_url( 'admin-post.php' ) ),
			esc_attr( $attribute ),
			esc_attr( $action ),
			esc_attr( $task_id ),
			wp_nonce_field( $action . '_' . $task_id, '_wpnonce', true, false ), // phpcs:ignore WordPress.Security.EscapeOutput.OutputNotEscaped
			esc_html( $label )
		);
	}

	/**
	 * A progress bar the live script can move.
	 *
	 * @param int $progress Percent.
	 */
	private static function progress_bar( $progress ) {
		printf(
			'<div class="dap-progress" role="progressbar" aria-valuemin="0" aria-valuemax="100" aria-valuenow="%1$d" data-dap-progress><div class="dap-progress-bar" style="width:%1$d%%"></div><span class="dap-progress-value">%1$d%%</span></div>',
			(int) $progress
		);
	}

	/**
	 * Pagination links.
	 *
	 * @param int    $total  Total tasks.
	 * @param int    $paged  Current page.
	 * @param string $status Status filter.
	 */
	private function render_pagination( $total, $paged, $status ) {
		$pages = (int) ceil( $total / self::PER_PAGE );
		if ( $pages <= 1 ) {
			return;
		}
		$links = paginate_links(
			array(
				'base'    => add_query_arg( 'paged', '%#%', add_query_arg( 'status', $status, admin_url( 'admin.php?page=dap-tasks' ) ) ),
				'format'  => '',
				'current' => $paged,
				'total'   => $pages,
			)
		);
		echo '<div class="tablenav"><div class="tablenav-pages">' . wp_kses_post( $links ) . '</div></div>';
	}

	/**
	 * A task's result view: status (live), result table, artifacts.
	 *
	 * @param string $task_id Task id.
	 */
	private function render_result_view( $task_id ) {
		$client = DAP_Client::from_settings();
		echo '<div class="wrap"><h1>' . esc_html(
			sprintf(
				/* translators: %s: task id */
				__( 'Task %s', 'distributed-data-analysis' ),
				$task_id
			)
		) . '</h1> <span class="dap-live-state" data-dap-live-state></span>';
		echo '<p><a href="' . esc_url( admin_url( 'admin.php?page=dap-tasks' ) ) . '">' . esc_html__( '← All tasks', 'distributed-data-analysis' ) . '</a></p>';

		$task = $client->get_task( $task_id );
		if ( is_wp_error( $task ) ) {
			self::print_error( $task );
			echo '</div>';
			return;
		}
		$status = (string) ( $task['status'] ?? '' );
		printf( '<table class="widefat dap-task-summary"><tbody><tr data-task-id="%1$s" data-status="%2$s">', esc_attr( $task_id ), esc_attr( $status ) );
		printf( '<th scope="row">%s</th>', esc_html__( 'Status', 'distributed-data-analysis' ) );
		printf( '<td><span class="dap-status dap-status-%1$s" data-dap-status>%2$s</span></td><td>', esc_attr( $status ), esc_html( self::status_label( $status ) ) );
		self::progress_bar( (int) ( $task['progress'] ?? 0 ) );
		printf( '</td><td data-dap-stage>%s</td></tr></tbody></table>', esc_html( (string) ( $task['stage'] ?? '' ) ) );

		if ( ! empty( $task['error']['message'] ) ) {
			echo '<div class="notice notice-error inline"><p>' . esc_html( $task['error']['code'] . ': ' . $task['error']['message'] ) . '</p></div>';
		}
		if ( 'completed' !== $status ) {
			echo '<p class="description">' . esc_html__( 'The result appears here once the task has completed; reload then.', 'distributed-data-analysis' ) . '</p></div>';
			return;
		}

		$result = $client->get_result( $task_id );
		if ( is_wp_error( $result ) ) {
			self::print_error( $result );
			echo '</div>';
			return;
		}
		$data = isset( $result['result_data'] ) && is_array( $result['result_data'] ) ? $result['result_data'] : array();
		if ( isset( $data['rows'] ) && is_array( $data['rows'] ) ) {
			self::render_chart( $data );
			$rpage = isset( $_GET['rpage'] ) ? absint( $_GET['rpage'] ) : 1; // phpcs:ignore WordPress.Security.NonceVerification.Recommended -- read-only paging.
			self::render_result_table( $data, $rpage );
		}
		// The result endpoint lists the artifacts; older servers only answer the list endpoint.
		if ( isset( $result['artifacts'] ) && is_array( $result['artifacts'] ) ) {
			$list = $result['artifacts'];
		} else {
			$artifacts = $client->list_artifacts( $task_id );
			$list      = ! is_wp_error( $artifacts ) && isset( $artifacts['artifacts'] ) && is_array( $artifacts['artifacts'] ) ? $artifacts['artifacts'] : array();
		}
		DAP_Results::render( $task_id, (int) ( $task['operation_code'] ?? $result['operation_code'] ?? 0 ), $data, $list );
		echo '</div>';
	}

	/**
	 * A horizontal bar chart (inline SVG, no library) of the first numeric column against the
	 * first text column, for up to 20 rows. Nothing when the result has no such pair.
	 *
	 * @param array $data result_data.
	 */
	public static function render_chart( array $data ) {
		$columns = isset( $data['columns'] ) && is_array( $data['columns'] ) ? array_values( $data['columns'] ) : array();
		$rows    = isset( $data['rows'] ) && is_array( $data['rows'] ) ? array_slice( array_values( $data['rows'] ), 0, 20 ) : array();
		if ( ! $columns || ! $rows ) {
			return;
		}
		$cell = static function ( $row, $i, $name ) {
			$row = (array) $row;
			return array_key_exists( $name, $row ) ? $row[ $name ] : ( $row[ $i ] ?? null );
		};
		$label_col = null;
		$value_col = null;
		foreach ( $columns as $i => $name ) {
			$values  = array_map(
				static function ( $row ) use ( $cell, $i, $name ) {
					return $cell( $row, $i, $name );
				},
				$rows
			);
			$numeric = ! in_array( false, array_map( static function ( $v ) {
				return is_int( $v ) || is_float( $v );
			}, $values ), true );
			if ( $numeric && null === $value_col ) {
				$value_col = $i;
			} elseif ( ! $numeric && null === $label_col && ! in_array( false, array_map( 'is_string', $values ), true ) ) {
				$label_col = $i;
			}
		}
		if ( null === $label_col || null === $value_col ) {
			return;
		}
		$max = 0.0;
		foreach ( $rows as $row ) {
			$max = max( $max, abs( (float) $cell( $row, $value_col, $columns[ $value_col ] ) ) );
		}
		$bar_h  = 18;
		$height = count( $rows ) * ( $bar_h + 4 ) + 24;
		printf(
			'<figure class="dap-chart"><svg xmlns="http://www.w3.org/2000/svg" width="640" height="%1$d" viewBox="0 0 640 %1$d" role="img" aria-label="%2$s">',
			(int) $height,
			esc_attr(
				sprintf(
					/* translators: 1: value column, 2: label column */
					__( '%1$s by %2$s', 'distributed-data-analysis' ),
					$columns[ $value_col ],
					$columns[ $label_col ]
				)
			)
		);
		foreach ( $rows as $n => $row ) {
			$value = (float) $cell( $row, $value_col, $columns[ $value_col ] );
			$width = $max > 0 ? (int) round( 400 * abs( $value ) / $max ) : 0;
			$y     = $n * ( $bar_h + 4 );
			printf(
				'<text x="150" y="%1$d" text-anchor="end" font-size="12">%2$s</text><rect class="dap-chart-bar" x="160" y="%3$d" width="%4$d" height="%5$d" fill="#2271b1"></rect><text x="%6$d" y="%1$d" font-size="12">%7$s</text>',
				(int) ( $y + 13 ),
				esc_html( mb_strimwidth( (string) $cell( $row, $label_col, $columns[ $label_col ] ), 0, 24, '…' ) ),
				(int) $y,
				(int) $width,
				(int) $bar_h,
				(int) ( 166 + $width ),
				esc_html( (string) $cell( $row, $value_col, $columns[ $value_col ] ) )
			);
		}
		printf(
			'</svg><figcaption>%s</figcaption></figure>',
			esc_html(
				sprintf(
					/* translators: 1: value column, 2: label column */
					__( '%1$s by %2$s', 'distributed-data-analysis' ),
					$columns[ $value_col ],
					$columns[ $label_col ]
				)
			)
		);
	}

	/**
	 * `result_data.rows` as a table under `result_data.columns`, one page of rows at a time.
	 *
	 * @param array $data     result_data.
	 * @param int   $page     Page (1-based), from `rpage`.
	 * @param int   $per_page Rows per page.
	 */
	public static function render_result_table( array $data, $page = 1, $per_page = 50 ) {
		$columns = isset( $data['columns'] ) && is_array( $data['columns'] ) ? array_values( $data['columns'] ) : array();
		$all     = isset( $data['rows'] ) && is_array( $data['rows'] ) ? array_values( $data['rows'] ) : array();
		$pages   = max( 1, (int) ceil( count( $all ) / $per_page ) );
		$page    = min( max( 1, (int) $page ), $pages );
		$rows    = array_slice( $all, ( $page - 1 ) * $per_page, $per_page );
		if ( isset( $data['row_count'] ) ) {
			echo '<p>' . esc_html(
				sprintf(
					/* translators: 1: rows in the result preview, 2: total rows */
					__( 'The result holds %1$d of %2$d rows.', 'distributed-data-analysis' ),
					count( $all ),
					(int) $data['row_count']
				)
			) . '</p>';
		}
		if ( $pages > 1 ) {
			$links = paginate_links(
				array(
					'base'    => add_query_arg( 'rpage', '%#%' ),
					'format'  => '',
					'current' => $page,
					'total'   => $pages,
				)
			);
			echo '<div class="tablenav"><div class="tablenav-pages">' . wp_kses_post( $links ) . '</div></div>';
		}
		if ( ! $columns && $rows && is_array( reset( $rows ) ) ) {
			$columns = array_keys( reset( $rows ) );
		}
		echo '<table class="widefat striped dap-result"><thead><tr>';
		foreach ( $columns as $column ) {
			echo '<th scope="col">' . esc_html( (string) $column ) . '</th>';
		}
		echo '</tr></thead><tbody>';
		foreach ( $rows as $row ) {
			$row = (array) $row;
			echo '<tr>';
			foreach ( $columns as $i => $column ) {
				$cell = array_key_exists( $column, $row ) ? $row[ $column ] : ( $row[ $i ] ?? null );
				echo '<td>' . esc_html( is_scalar( $cell ) || null === $cell ? (string) ( is_bool( $cell ) ? ( $cell ? 'true' : 'false' ) : $cell ) : wp_json_encode( $cell ) ) . '</td>';
			}
			echo '</tr>';
		}
		echo '</tbody></table>';
	}

	/**
	 * New task form (DAP_New_Task_Page renders it).
	 */
	public function render_new_task_page() {
		if ( ! current_user_can( DAP_Capabilities::CREATE_TASKS ) ) {
			wp_die( esc_html__( 'You are not allowed to create Data Analysis tasks.', 'distributed-data-analysis' ), 403 );
		}
		DAP_New_Task_Page::render(
			function () {
				$this->render_flash();
			}
		);
	}

	/**
	 * Runners page.
	 */
	public function render_runners_page() {
		if ( ! current_user_can( DAP_Capabilities::VIEW_RESULTS ) ) {
			wp_die( esc_html__( 'You are not allowed to view Data Analysis results.', 'distributed-data-analysis' ), 403 );
		}
		echo '<div class="wrap"><h1>' . esc_html__( 'Runners', 'distributed-data-analysis' ) . '</h1> <span class="dap-live-state" data-dap-live-state></span>';
		$res = DAP_Client::from_settings()->list_runners();
		if ( is_wp_error( $res ) ) {
			self::print_error( $res );
			echo '</div>';
			return;
		}
		echo '<table class="widefat striped dap-runners"><thead><tr>';
		foreach ( array( __( 'Name', 'distributed-data-analysis' ), __( 'State', 'distributed-data-analysis' ), __( 'Slots', 'distributed-data-analysis' ), __( 'Current task', 'distributed-data-analysis' ), __( 'Datasets', 'distributed-data-analysis' ), __( 'Last seen', 'distributed-data-analysis' ) ) as $heading ) {
			echo '<th scope="col">' . esc_html( $heading ) . '</th>';
		}
		echo '</tr></thead><tbody>';
		$runners = (array) ( $res['runners'] ?? array() );
		if ( ! $runners ) {
			echo '<tr><td colspan="6">' . esc_html__( 'No runner is enrolled.', 'distributed-data-analysis' ) . '</td></tr>';
		}
		foreach ( $runners as $runner ) {
			$state    = (string) ( $runner['state'] ?? '' );
			$datasets = array();
			foreach ( (array) ( $runner['datasets'] ?? array() ) as $set ) {
				$datasets[] = is_array( $set ) ? (string) ( $set['name'] ?? '' ) : (string) $set;
			}
			$current = (string) ( $runner['current_task'] ?? '' );
			printf( '<tr data-runner-id="%s">', esc_attr( (string) ( $runner['runner_id'] ?? '' ) ) );
			printf( '<td><strong>%1$s</strong><br /><code>%2$s</code></td>', esc_html( (string) ( $runner['name'] ?? '' ) ), esc_html( (string) ( $runner['runner_id'] ?? '' ) ) );
			printf( '<td><span class="dap-status dap-status-%1$s" data-dap-runner-state>%2$s</span></td>', esc_attr( $state ), esc_html( self::status_label( $state ) ) );
			printf( '<td>%1$d / %2$s</td>', (int) ( $runner['slots_used'] ?? 0 ), esc_html( (string) ( $runner['slots'] ?? '—' ) ) );
			echo '<td>' . ( '' !== $current ? '<a href="' . esc_url( self::result_url( $current ) ) . '"><code>' . esc_html( $current ) . '</code></a>' : '—' ) . '</td>';
			printf( '<td>%s</td>', esc_html( implode( ', ', $datasets ) ) );
			printf( '<td>%s</td></tr>', esc_html( (string) ( $runner['last_seen_at'] ?? '' ) ) );
		}
		echo '</tbody></table></div>';
	}

	/*
	 * ------------------------------------------------------------------ Handlers
	 */

	/**
	 * admin-post: create a task from the New task form.
	 */
	public function handle_create_task() {
		if ( ! current_user_can( DAP_Capabilities::CREATE_TASKS ) ) {
			wp_die( esc_html__( 'You are not allowed to create Data Analysis tasks.', 'distributed-data-analysis' ), '', array( 'response' => 403 ) );
		}
		check_admin_referer( 'dap_create_task' );
		$result = $this->create_task_from_input( wp_unslash( $_POST ) );
		if ( is_wp_error( $result ) ) {
			self::flash( 'error', self::describe_error( $result ) );
			wp_safe_redirect( admin_url( 'admin.php?page=dap-new-task' ) );
			exit;
		}
		self::flash(
			'success',
			sprintf(
				/* translators: %s: task id */
				__( 'Task %s created.', 'distributed-data-analysis' ),
				(string) ( $result['task_id'] ?? '' )
			)
		);
		wp_safe_redirect( admin_url( 'admin.php?page=dap-tasks' ) );
		exit;
	}

	/**
	 * Validate the form input (DAP_Task_Form, against the dataset's schema when the server
	 * advertises it) and create the task on the server.
	 *
	 * @param array $input Unslashed form input.
	 * @return array|WP_Error The server's answer `{task_id, status, runner_id}`.
	 */
	public function create_task_from_input( array $input ) {
		$client = DAP_Client::from_settings();
		$task   = DAP_Task_Form::build( $input, self::dataset_schema( $client, $input ) );
		if ( is_wp_error( $task ) ) {
			return $task;
		}
		return $client->create_task( $task['operation_code'], $task['params'], $task['runner_id'], $task['queue'] );
	}

	/**
	 * Column name => dtype of the dataset the form names, from `GET /api/v1/datasets`; null when
	 * the input is an earlier task or the server does not know the dataset (then the runner
	 * checks the columns).
	 *
	 * @param DAP_Client $client Client.
	 * @param array      $input  Form input.
	 * @return array|null
	 */
	private static function dataset_schema( DAP_Client $client, array $input ) {
		$name = isset( $input['dataset'] ) && is_string( $input['dataset'] ) ? sanitize_text_field( $input['dataset'] ) : '';
		if ( '' === $name || ( 'task' === ( $input['source'] ?? '' ) && 100 !== absint( $input['operation_code'] ?? 0 ) ) ) {
			return null;
		}
		$res = $client->list_datasets();
		if ( is_wp_error( $res ) ) {
			return null;
		}
		foreach ( (array) ( $res['datasets'] ?? array() ) as $set ) {
			if ( is_array( $set ) && ( $set['name'] ?? '' ) === $name ) {
				$schema = array();
				foreach ( (array) ( $set['columns'] ?? array() ) as $col ) {
					if ( is_array( $col ) && isset( $col['name'] ) ) {
						$schema[ (string) $col['name'] ] = (string) ( $col['dtype'] ?? '' );
					}
				}
				return $schema ? $schema : null;
			}
		}
		return null;
	}

	/**
	 * admin-post: cancel a task.
	 */
	public function handle_cancel_task() {
		if ( ! current_user_can( DAP_Capabilities::CREATE_TASKS ) ) {
			wp_die( esc_html__( 'You are not allowed to cancel Data Analysis tasks.', 'distributed-data-analysis' ), '', array( 'response' => 403 ) );
		}
		$task_id = isset( $_POST['task_id'] ) ? sanitize_text_field( wp_unslash( $_POST['task_id'] ) ) : '';
		check_admin_referer( 'dap_cancel_task_' . $task_id );
		$res = DAP_Client::from_settings()->cancel_task( $task_id );
		if ( is_wp_error( $res ) ) {
			self::flash( 'error', self::describe_error( $res ) );
		} else {
			/* translators: %s: task id */
			self::flash( 'success', sprintf( __( 'Task %s cancelled.', 'distributed-data-analysis' ), $task_id ) );
		}
		wp_safe_redirect( admin_url( 'admin.php?page=dap-tasks' ) );
		exit;
	}

	/**
	 * admin-post: retry a failed or cancelled task (a new task with the same operation, params
	 * and target runner; the server has no retry endpoint of its own yet).
	 */
	public function handle_retry_task() {
		if ( ! current_user_can( DAP_Capabilities::CREATE_TASKS ) ) {
			wp_die( esc_html__( 'You are not allowed to create Data Analysis tasks.', 'distributed-data-analysis' ), '', array( 'response' => 403 ) );
		}
		$task_id = isset( $_POST['task_id'] ) ? sanitize_text_field( wp_unslash( $_POST['task_id'] ) ) : '';
		check_admin_referer( 'dap_retry_task_' . $task_id );
		$res = self::retry_task( $task_id );
		if ( is_wp_error( $res ) ) {
			self::flash( 'error', self::describe_error( $res ) );
		} else {
			/* translators: 1: old task id, 2: new task id */
			self::flash( 'success', sprintf( __( 'Task %1$s retried as task %2$s.', 'distributed-data-analysis' ), $task_id, (string) ( $res['task_id'] ?? '' ) ) );
		}
		wp_safe_redirect( admin_url( 'admin.php?page=dap-tasks' ) );
		exit;
	}

	/**
	 * Create a task like an earlier failed or cancelled one.
	 *
	 * @param string $task_id The earlier task.
	 * @return array|WP_Error The server's answer for the new task.
	 */
	public static function retry_task( $task_id ) {
		$client = DAP_Client::from_settings();
		$task   = $client->get_task( $task_id );
		if ( is_wp_error( $task ) ) {
			return $task;
		}
		if ( ! in_array( $task['status'] ?? '', array( 'failed', 'cancelled' ), true ) ) {
			return new WP_Error( 'dap_not_retryable', __( 'Only failed or cancelled tasks can be retried.', 'distributed-data-analysis' ) );
		}
		$params = isset( $task['params'] ) && is_array( $task['params'] ) ? $task['params'] : array();
		return $client->create_task( (int) ( $task['operation_code'] ?? 0 ), $params, $task['target_runner_id'] ?? null );
	}

	/**
	 * AJAX: Test connection (nonce `dap_test_connection`, capability dap_manage_settings).
	 */
	public function ajax_test_connection() {
		check_ajax_referer( 'dap_test_connection', 'nonce' );
		if ( ! current_user_can( DAP_Capabilities::MANAGE_SETTINGS ) ) {
			wp_send_json_error( array( 'message' => __( 'You are not allowed to manage Data Analysis settings.', 'distributed-data-analysis' ) ), 403 );
		}
		$checks = self::test_connection();
		$ok     = ! in_array( false, wp_list_pluck( $checks, 'ok' ), true );
		wp_send_json_success(
			array(
				'ok'     => $ok,
				'checks' => $checks,
			)
		);
	}

	/**
	 * Run the connection checks: `GET /healthz`, then an authenticated `GET /api/v1/tasks?limit=1`.
	 *
	 * @return array[] Each `{label, ok, message}`.
	 */
	public static function test_connection() {
		$client = DAP_Client::from_settings();
		$checks = array();

		$health   = $client->health();
		$checks[] = array(
			'label'   => __( 'Server reachable (GET /healthz)', 'distributed-data-analysis' ),
			'ok'      => ! is_wp_error( $health ),
			'message' => is_wp_error( $health ) ? self::describe_error( $health ) : __( 'The server answered.', 'distributed-data-analysis' ),
		);
		if ( is_wp_error( $health ) ) {
			return $checks;
		}
		$tasks    = $client->list_tasks( array( 'limit' => 1 ) );
		$checks[] = array(
			'label'   => __( 'API key accepted (GET /api/v1/tasks)', 'distributed-data-analysis' ),
			'ok'      => ! is_wp_error( $tasks ),
			'message' => is_wp_error( $tasks )
				? self::describe_error( $tasks )
				: sprintf(
					/* translators: %d: number of tasks */
					__( 'The key works; the server holds %d task(s).', 'distributed-data-analysis' ),
					(int) ( $tasks['total'] ?? 0 )
				),
		);
		return $checks;
	}

	/*
	 * ------------------------------------------------------------------ Helpers
	 */

	/**
	 * An admin-facing sentence for a client error.
	 *
	 * @param WP_Error $error Error from DAP_Client.
	 * @return string
	 */
	public static function describe_error( WP_Error $error ) {
		$data    = $error->get_error_data();
		$details = is_array( $data ) && isset( $data['details'] ) && is_array( $data['details'] ) ? $data['details'] : array();
		switch ( $error->get_error_code() ) {
			case 'runner_busy':
				$runner_id = (string) ( $details['runner_id'] ?? '' );
				$running   = implode( ', ', array_map( 'strval', (array) ( $details['running_tasks'] ?? array() ) ) );
				if ( '' === $runner_id || '' === $running ) {
					// No details to name the runner and its task: the server's own sentence says it.
					/* translators: %s: server message */
					return sprintf( __( 'The runner is busy: %s', 'distributed-data-analysis' ), $error->get_error_message() );
				}
				return sprintf(
					/* translators: 1: runner name, 2: task id(s) */
					__( 'Runner %1$s is busy with task %2$s. Choose another runner or tick “Queue if the runner is busy”.', 'distributed-data-analysis' ),
					self::runner_name( $runner_id ),
					$running
				);
			case 'runner_draining':
				$runner_id = (string) ( $details['runner_id'] ?? '' );
				return sprintf(
					/* translators: %s: runner name */
					__( 'Runner %s is shutting down: it finishes its current tasks and takes no new ones. Choose another runner or tick “Queue if the runner is busy” to run it when the runner is back.', 'distributed-data-analysis' ),
					self::runner_name( $runner_id )
				);
			case 'runner_offline':
				/* translators: %s: server message */
				return sprintf( __( 'That runner is offline: %s', 'distributed-data-analysis' ), $error->get_error_message() );
			case 'unauthorized':
			case 'forbidden':
				/* translators: %s: server message */
				return sprintf( __( 'The DAP server refused the API key: %s', 'distributed-data-analysis' ), $error->get_error_message() );
			case 'dap_unreachable':
			case 'dap_server_error':
			case 'dap_not_configured':
			case 'dap_invalid_response':
				return $error->get_error_message();
			default:
				/* translators: 1: server message, 2: error code */
				return sprintf( __( 'The DAP server refused: %1$s (%2$s)', 'distributed-data-analysis' ), $error->get_error_message(), $error->get_error_code() );
		}
	}

	/**
	 * A runner's name from its id (the id itself when it cannot be looked up).
	 *
	 * @param string $runner_id Runner id.
	 * @return string
	 */
	private static function runner_name( $runner_id ) {
		if ( '' === $runner_id ) {
			return '?';
		}
		$res = DAP_Client::from_settings()->list_runners();
		if ( ! is_wp_error( $res ) ) {
			foreach ( (array) ( $res['runners'] ?? array() ) as $runner ) {
				if ( ( $runner['runner_id'] ?? '' ) === $runner_id && ! empty( $runner['name'] ) ) {
					return (string) $runner['name'];
				}
			}
		}
		return $runner_id;
	}

	/**
	 * Print a client error as an admin notice.
	 *
	 * @param WP_Error $error Error.
	 */
	public static function print_error( WP_Error $error ) {
		echo '<div class="notice notice-error inline dap-error"><p>' . esc_html( self::describe_error( $error ) ) . '</p></div>';
	}

	/**
	 * Keep a message for the current user's next page view.
	 *
	 * @param string $type    success|error.
	 * @param string $message Text.
	 */
	public static function flash( $type, $message ) {
		set_transient(
			'dap_flash_' . get_current_user_id(),
			array(
				'type'    => $type,
				'message' => $message,
			),
			5 * MINUTE_IN_SECONDS
		);
	}

	/**
	 * Print (and forget) the current user's flash message.
	 */
	private function render_flash() {
		$key   = 'dap_flash_' . get_current_user_id();
		$flash = get_transient( $key );
		if ( ! is_array( $flash ) ) {
			return;
		}
		delete_transient( $key );
		printf( '<div class="notice notice-%1$s is-dismissible dap-flash"><p>%2$s</p></div>', esc_attr( 'error' === $flash['type'] ? 'error' : 'success' ), esc_html( $flash['message'] ) );
	}

	/**
	 * Translated label of a task or runner state.
	 *
	 * @param string $status State.
	 * @return string
	 */
	public static function status_label( $status ) {
		$labels = array(
			'queued'    => __( 'Queued', 'distributed-data-analysis' ),
			'assigned'  => __( 'Assigned', 'distributed-data-analysis' ),
			'running'   => __( 'Running', 'distributed-data-analysis' ),
			'completed' => __( 'Completed', 'distributed-data-analysis' ),
			'failed'    => __( 'Failed', 'distributed-data-analysis' ),
			'cancelled' => __( 'Cancelled', 'distributed-data-analysis' ),
			'idle'      => __( 'Idle', 'distributed-data-analysis' ),
			'busy'      => __( 'Busy', 'distributed-data-analysis' ),
			'offline'   => __( 'Offline', 'distributed-data-analysis' ),
			'draining'  => __( 'Draining', 'distributed-data-analysis' ),
		);
		return $labels[ $status ] ?? $status;
	}
}
