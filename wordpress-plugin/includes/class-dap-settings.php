<?php
/**
 * Settings → Data Analysis: the option, its sanitisation and its form.
 *
 * @package DistributedDataAnalysis
 */

defined( 'ABSPATH' ) || exit;

/**
 * Owns the `dap_settings` option. Secrets (API key, webhook secret) are stored here but never
 * printed: the form shows a masked, empty field and a blank submission keeps the stored value.
 */
class DAP_Settings {

	const OPTION = 'dap_settings';
	const GROUP  = 'dap_settings_group';
	const PAGE   = 'dap-settings';

	/**
	 * Defaults for every key of the option.
	 *
	 * @return array<string, mixed>
	 */
	public static function defaults() {
		return array(
			'server_url'       => '',
			'api_key'          => '',
			'webhook_secret'   => '',
			'notify_completed' => false,
			'notify_failed'    => true,
			'recipients'       => '',
		);
	}

	/**
	 * The stored option merged over the defaults.
	 *
	 * @return array<string, mixed>
	 */
	public static function get_all() {
		$stored = get_option( self::OPTION, array() );
		return array_merge( self::defaults(), is_array( $stored ) ? $stored : array() );
	}

	/**
	 * One setting.
	 *
	 * @param string $key Setting name.
	 * @return mixed
	 */
	public static function get( $key ) {
		$all = self::get_all();
		return $all[ $key ] ?? null;
	}

	/**
	 * Server base URL without a trailing slash ('' when not configured).
	 *
	 * @return string
	 */
	public static function server_url() {
		return untrailingslashit( (string) self::get( 'server_url' ) );
	}

	/**
	 * The API key; the `DAP_API_KEY` constant (wp-config.php) overrides the stored one.
	 *
	 * @return string
	 */
	public static function api_key() {
		if ( self::api_key_from_constant() ) {
			return (string) constant( 'DAP_API_KEY' );
		}
		return (string) self::get( 'api_key' );
	}

	/**
	 * Whether wp-config.php defines the API key.
	 *
	 * @return bool
	 */
	public static function api_key_from_constant() {
		return defined( 'DAP_API_KEY' ) && '' !== (string) constant( 'DAP_API_KEY' );
	}

	/**
	 * The webhook secret; the `DAP_WEBHOOK_SECRET` constant overrides the stored one.
	 *
	 * @return string
	 */
	public static function webhook_secret() {
		if ( self::webhook_secret_from_constant() ) {
			return (string) constant( 'DAP_WEBHOOK_SECRET' );
		}
		return (string) self::get( 'webhook_secret' );
	}

	/**
	 * Whether wp-config.php defines the webhook secret.
	 *
	 * @return bool
	 */
	public static function webhook_secret_from_constant() {
		return defined( 'DAP_WEBHOOK_SECRET' ) && '' !== (string) constant( 'DAP_WEBHOOK_SECRET' );
	}

	/**
	 * Notification recipients; the site admin email when none are configured.
	 *
	 * @return string[]
	 */
	public static function recipients() {
		$list = array_filter( array_map( 'trim', explode( ',', (string) self::get( 'recipients' ) ) ) );
		if ( empty( $list ) ) {
			$list = array( get_option( 'admin_email' ) );
		}
		return array_values( $list );
	}

	/**
	 * Hooks: register the setting and its form.
	 */
	public function init() {
		add_action( 'admin_init', array( $this, 'register' ) );
		// options.php checks manage_options unless told which capability guards this group.
		add_filter( 'option_page_capability_' . self::GROUP, array( __CLASS__, 'capability' ) );
	}

	/**
	 * The capability that guards the settings.
	 *
	 * @return string
	 */
	public static function capability() {
		return DAP_Capabilities::MANAGE_SETTINGS;
	}

	/**
	 * Settings API registration.
	 */
	public function register() {
		register_setting(
			self::GROUP,
			self::OPTION,
			array(
				'type'              => 'object',
				'sanitize_callback' => array( __CLASS__, 'sanitize' ),
				'default'           => self::defaults(),
				'show_in_rest'      => false,
			)
		);

		add_settings_section( 'dap_server', __( 'Server', 'distributed-data-analysis' ), '__return_false', self::PAGE );
		add_settings_field( 'dap_server_url', __( 'Server URL', 'distributed-data-analysis' ), array( $this, 'field_server_url' ), self::PAGE, 'dap_server', array( 'label_for' => 'dap_server_url' ) );
		add_settings_field( 'dap_api_key', __( 'API key', 'distributed-data-analysis' ), array( $this, 'field_api_key' ), self::PAGE, 'dap_server', array( 'label_for' => 'dap_api_key' ) );

		add_settings_section( 'dap_notifications', __( 'Notifications', 'distributed-data-analysis' ), '__return_false', self::PAGE );
		add_settings_field( 'dap_notify', __( 'Email me when a task', 'distributed-data-analysis' ), array( $this, 'field_notify' ), self::PAGE, 'dap_notifications' );
		add_settings_field( 'dap_recipients', __( 'Recipients', 'distributed-data-analysis' ), array( $this, 'field_recipients' ), self::PAGE, 'dap_notifications', array( 'label_for' => 'dap_recipients' ) );
		add_settings_field( 'dap_webhook_secret', __( 'Webhook secret', 'distributed-data-analysis' ), array( $this, 'field_webhook_secret' ), self::PAGE, 'dap_notifications', array( 'label_for' => 'dap_webhook_secret' ) );
	}

	/**
	 * Sanitize callback for the whole option. Invalid values are reported with
	 * add_settings_error() and the previously stored value is kept.
	 *
	 * @param mixed $input Submitted value.
	 * @return array<string, mixed>
	 */
	public static function sanitize( $input ) {
		$old   = self::get_all();
		$input = is_array( $input ) ? $input : array(); // options.php has already unslashed it.
		$out   = $old;

		// Server URL: an absolute http(s) URL with a host.
		$url = isset( $input['server_url'] ) ? trim( (string) $input['server_url'] ) : '';
		if ( '' === $url ) {
			$out['server_url'] = '';
		} elseif ( self::is_valid_server_url( $url ) ) {
			$out['server_url'] = untrailingslashit( esc_url_raw( $url, array( 'http', 'https' ) ) );
		} else {
			add_settings_error( self::OPTION, 'dap_invalid_server_url', __( 'The server URL must be an http:// or https:// address; the previous value was kept.', 'distributed-data-analysis' ) );
		}

		// Secrets: blank keeps the stored value; the "clear" box removes it.
		foreach ( array( 'api_key', 'webhook_secret' ) as $secret ) {
			if ( ! empty( $input[ $secret . '_clear' ] ) ) {
				$out[ $secret ] = '';
				continue;
			}
			$value = isset( $input[ $secret ] ) ? trim( (string) $input[ $secret ] ) : '';
			if ( '' === $value ) {
				continue;
			}
			if ( preg_match( '/[^\x21-\x7e]/', $value ) ) {
				add_settings_error( self::OPTION, 'dap_invalid_' . $secret, __( 'Secrets may only contain printable ASCII characters without spaces; the previous value was kept.', 'distributed-data-analysis' ) );
				continue;
			}
			$out[ $secret ] = $value;
		}

		$out['notify_completed'] = ! empty( $input['notify_completed'] );
		$out['notify_failed']    = ! empty( $input['notify_failed'] );

		// Recipients: keep the valid addresses, report the others.
		$raw     = isset( $input['recipients'] ) ? (string) $input['recipients'] : '';
		$valid   = array();
		$invalid = array();
		foreach ( preg_split( '/[\s,;]+/', $raw, -1, PREG_SPLIT_NO_EMPTY ) as $candidate ) {
			$email = sanitize_email( $candidate );
			if ( '' !== $email && is_email( $email ) && $email === $candidate ) {
				$valid[] = $email;
			} else {
				$invalid[] = $candidate;
			}
		}
		if ( $invalid ) {
			add_settings_error(
				self::OPTION,
				'dap_invalid_recipients',
				sprintf(
					/* translators: %s: comma-separated list of rejected addresses */
					__( 'These are not valid email addresses and were ignored: %s', 'distributed-data-analysis' ),
					implode( ', ', array_map( 'sanitize_text_field', $invalid ) )
				)
			);
		}
		$out['recipients'] = implode( ',', array_unique( $valid ) );

		return array_intersect_key( $out, self::defaults() );
	}

	/**
	 * Whether a URL is an absolute http(s) URL with a host.
	 *
	 * @param string $url Candidate.
	 * @return bool
	 */
	public static function is_valid_server_url( $url ) {
		$parts = wp_parse_url( $url );
		if ( ! is_array( $parts ) || empty( $parts['host'] ) || empty( $parts['scheme'] ) ) {
			return false;
		}
		if ( ! in_array( strtolower( $parts['scheme'] ), array( 'http', 'https' ), true ) ) {
			return false;
		}
		return ! isset( $parts['user'] ) && ! isset( $parts['query'] ) && ! isset( $parts['fragment'] );
	}

	/**
	 * Server URL field.
	 */
	public function field_server_url() {
		printf(
			'<input type="url" class="regular-text code" id="dap_server_url" name="%1$s[server_url]" value="%2$s" placeholder="https://dap.example.com" />',
			esc_attr( self::OPTION ),
			esc_attr( self::get( 'server_url' ) )
		);
		echo '<p class="description">' . esc_html__( 'Where dap-server listens. Its CORS origins must include this site for live progress.', 'distributed-data-analysis' ) . '</p>';
	}

	/**
	 * API key field: never shows the stored value.
	 */
	public function field_api_key() {
		$this->secret_field( 'api_key', self::api_key_from_constant(), '' !== (string) self::get( 'api_key' ), 'DAP_API_KEY' );
	}

	/**
	 * Webhook secret field: never shows the stored value.
	 */
	public function field_webhook_secret() {
		$this->secret_field( 'webhook_secret', self::webhook_secret_from_constant(), '' !== (string) self::get( 'webhook_secret' ), 'DAP_WEBHOOK_SECRET' );
		echo '<p class="description">' . esc_html(
			sprintf(
				/* translators: %s: webhook URL */
				__( 'Signing secret of the server webhook pointed at %s (Standard Webhooks; "whsec_…" accepted).', 'distributed-data-analysis' ),
				rest_url( 'dap/v1/webhook' )
			)
		) . '</p>';
	}

	/**
	 * A masked secret input.
	 *
	 * @param string $key           Option key.
	 * @param bool   $from_constant Whether a constant overrides it.
	 * @param bool   $is_set        Whether a value is stored.
	 * @param string $constant      Constant name.
	 */
	private function secret_field( $key, $from_constant, $is_set, $constant ) {
		if ( $from_constant ) {
			/* translators: %s: constant name */
			echo '<p>' . esc_html( sprintf( __( 'Set in wp-config.php (%s).', 'distributed-data-analysis' ), $constant ) ) . '</p>';
			return;
		}
		printf(
			'<input type="password" class="regular-text" id="dap_%1$s" name="%2$s[%1$s]" value="" autocomplete="new-password" placeholder="%3$s" />',
			esc_attr( $key ),
			esc_attr( self::OPTION ),
			esc_attr( $is_set ? __( '•••••••• (stored — leave blank to keep)', 'distributed-data-analysis' ) : '' )
		);
		if ( $is_set ) {
			printf(
				' <label><input type="checkbox" name="%1$s[%2$s_clear]" value="1" /> %3$s</label>',
				esc_attr( self::OPTION ),
				esc_attr( $key ),
				esc_html__( 'Remove', 'distributed-data-analysis' )
			);
		}
	}

	/**
	 * Notification checkboxes.
	 */
	public function field_notify() {
		foreach ( array(
			'notify_completed' => __( 'completes', 'distributed-data-analysis' ),
			'notify_failed'    => __( 'fails', 'distributed-data-analysis' ),
		) as $key => $label ) {
			printf(
				'<label><input type="checkbox" name="%1$s[%2$s]" value="1" %3$s /> %4$s</label><br />',
				esc_attr( self::OPTION ),
				esc_attr( $key ),
				checked( (bool) self::get( $key ), true, false ),
				esc_html( $label )
			);
		}
	}

	/**
	 * Recipients field.
	 */
	public function field_recipients() {
		printf(
			'<input type="text" class="regular-text" id="dap_recipients" name="%1$s[recipients]" value="%2$s" />',
			esc_attr( self::OPTION ),
			esc_attr( self::get( 'recipients' ) )
		);
		echo '<p class="description">' . esc_html__( 'Comma-separated. Empty: the site admin email.', 'distributed-data-analysis' ) . '</p>';
	}
}
