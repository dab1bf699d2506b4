/**
 * Settings → Data Analysis: the Test connection button (admin-ajax, nonce from wp_localize_script).
 */
( function () {
	'use strict';

	var cfg = window.dapSettings;
	var button = document.getElementById( 'dap-test-connection' );
	var out = document.getElementById( 'dap-test-result' );
	if ( ! cfg || ! button || ! out ) {
		return;
	}

	function render( checks ) {
		out.textContent = '';
		var list = document.createElement( 'ul' );
		checks.forEach( function ( check ) {
			var li = document.createElement( 'li' );
			li.className = check.ok ? 'dap-check-ok' : 'dap-check-failed';
			var strong = document.createElement( 'strong' );
			strong.textContent = ( check.ok ? '✔ ' : '✘ ' ) + check.label + ': ';
			li.appendChild( strong );
			li.appendChild( document.createTextNode( check.message ) );
			list.appendChild( li );
		} );
		out.appendChild( list );
	}

	button.addEventListener( 'click', function () {
		button.disabled = true;
		out.textContent = cfg.i18n.testing;
		var body = new URLSearchParams();
		body.append( 'action', 'dap_test_connection' );
		body.append( 'nonce', cfg.nonce );
		fetch( cfg.ajaxUrl, { method: 'POST', credentials: 'same-origin', body: body } )
			.then( function ( res ) {
				return res.json();
			} )
			.then( function ( json ) {
				if ( json && json.success ) {
					render( json.data.checks );
				} else {
					out.textContent = ( json && json.data && json.data.message ) || cfg.i18n.failed;
				}
			} )
			.catch( function () {
				out.textContent = cfg.i18n.failed;
			} )
			.then( function () {
				button.disabled = false;
			} );
	} );
}() );
