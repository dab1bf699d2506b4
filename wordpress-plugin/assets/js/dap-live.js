/**
 * Live progress for the Data Analysis pages.
 *
 * Gets a short-lived ticket from WordPress (POST dap/v1/sse-ticket with the REST nonce; the API
 * key stays on the server), opens EventSource(server + '/api/v1/events?ticket=…') and moves the
 * progress bars, stages and statuses of elements marked data-task-id. When the connection drops
 * it closes the EventSource, fetches a fresh ticket and reconnects with &last_event_id= so the
 * server replays what was missed. No dependencies, no polling.
 */
( function () {
	'use strict';

	var cfg = window.dapLive;
	if ( ! cfg || ! cfg.serverUrl || ! window.EventSource || ! window.fetch ) {
		return;
	}

	var TASK_EVENTS = [ 'task.created', 'task.assigned', 'task.progress', 'task.completed', 'task.failed', 'task.cancelled', 'task.requeued' ];
	var RUNNER_EVENTS = [ 'runner.online', 'runner.offline', 'runner.busy', 'runner.idle' ];
	var lastEventId = null;
	var source = null;
	var retryMs = 1000;
	var retryTimer = null;

	function setState( text, state ) {
		var els = document.querySelectorAll( '[data-dap-live-state]' );
		for ( var i = 0; i < els.length; i++ ) {
			els[ i ].textContent = text;
			els[ i ].setAttribute( 'data-state', state );
		}
	}

	function label( status ) {
		return status ? status.charAt( 0 ).toUpperCase() + status.slice( 1 ) : '';
	}

	function rowsFor( attr, id ) {
		var out = [];
		var els = document.querySelectorAll( '[' + attr + ']' );
		for ( var i = 0; i < els.length; i++ ) {
			if ( els[ i ].getAttribute( attr ) === id ) {
				out.push( els[ i ] );
			}
		}
		return out;
	}

	function setProgress( row, percent ) {
		var bar = row.querySelector( '[data-dap-progress]' );
		if ( ! bar ) {
			return;
		}
		var current = parseInt( bar.getAttribute( 'aria-valuenow' ), 10 ) || 0;
		// Progress never goes down (the server drops regressions; replays may repeat old values).
		var value = Math.max( current, Math.min( 100, Math.max( 0, Math.round( percent ) ) ) );
		bar.setAttribute( 'aria-valuenow', String( value ) );
		bar.querySelector( '.dap-progress-bar' ).style.width = value + '%';
		bar.querySelector( '.dap-progress-value' ).textContent = value + '%';
	}

	function setStatus( row, status ) {
		row.setAttribute( 'data-status', status );
		var el = row.querySelector( '[data-dap-status]' );
		if ( el ) {
			el.textContent = label( status );
			el.className = 'dap-status dap-status-' + status;
		}
		if ( status !== 'queued' && status !== 'assigned' && status !== 'running' ) {
			var cancel = row.querySelector( '[data-dap-cancel]' );
			if ( cancel ) {
				cancel.parentNode.removeChild( cancel );
			}
		}
	}

	function onTaskEvent( ev ) {
		remember( ev );
		var data;
		try {
			data = JSON.parse( ev.data );
		} catch ( e ) {
			return;
		}
		if ( ! data || ! data.task_id ) {
			return;
		}
		var rows = rowsFor( 'data-task-id', String( data.task_id ) );
		if ( ! rows.length ) {
			var inserted = insertRow( data );
			if ( inserted ) {
				rows = [ inserted ];
			}
		}
		for ( var i = 0; i < rows.length; i++ ) {
			var row = rows[ i ];
			if ( typeof data.progress === 'number' ) {
				setProgress( row, data.progress );
			}
			if ( ev.type === 'task.completed' ) {
				setProgress( row, 100 );
			}
			var status = data.status || ev.type.replace( 'task.', '' );
			if ( ev.type === 'task.progress' && ! data.status ) {
				status = 'running';
			}
			setStatus( row, status );
			if ( data.stage !== undefined && data.stage !== null ) {
				var stage = row.querySelector( '[data-dap-stage]' );
				if ( stage ) {
					stage.textContent = data.stage;
				}
			}
			if ( data.runner_id ) {
				var runner = row.querySelector( '[data-dap-runner] code' );
				if ( runner ) {
					runner.textContent = data.runner_id;
				}
			}
		}
		document.dispatchEvent( new CustomEvent( 'dap:' + ev.type, { detail: data } ) );
	}

	function cell( tr, child ) {
		var td = document.createElement( 'td' );
		if ( child ) {
			td.appendChild( child );
		}
		tr.appendChild( td );
		return td;
	}

	function el( tag, attrs, text ) {
		var node = document.createElement( tag );
		Object.keys( attrs || {} ).forEach( function ( k ) {
			node.setAttribute( k, attrs[ k ] );
		} );
		if ( text !== undefined ) {
			node.textContent = text;
		}
		return node;
	}

	// A task the page has not rendered (created after it loaded): add its row at the top of the
	// first, unfiltered Tasks page; the same updates then apply to it.
	function insertRow( data ) {
		var body = document.querySelector( 'tbody[data-dap-tasks][data-dap-insert="1"]' );
		if ( ! body ) {
			return null;
		}
		var empty = body.querySelector( 'tr.no-items' );
		if ( empty ) {
			empty.parentNode.removeChild( empty );
		}
		var id = String( data.task_id );
		var tr = el( 'tr', { 'data-task-id': id, 'data-status': data.status || 'queued' } );
		var link = el( 'a', { href: cfg.resultUrl + encodeURIComponent( id ) } );
		link.appendChild( el( 'code', {}, id ) );
		cell( tr, link );
		cell( tr, document.createTextNode( data.operation_code ? String( data.operation_code ) : '' ) );
		cell( tr, el( 'span', { 'class': 'dap-status', 'data-dap-status': '' }, '' ) );
		var bar = el( 'div', { 'class': 'dap-progress', role: 'progressbar', 'aria-valuemin': '0', 'aria-valuemax': '100', 'aria-valuenow': '0', 'data-dap-progress': '' } );
		var fill = el( 'div', { 'class': 'dap-progress-bar' } );
		fill.style.width = '0%';
		bar.appendChild( fill );
		bar.appendChild( el( 'span', { 'class': 'dap-progress-value' }, '0%' ) );
		cell( tr, bar );
		tr.appendChild( el( 'td', { 'data-dap-stage': '' }, '' ) );
		var runner = el( 'td', { 'data-dap-runner': '' } );
		runner.appendChild( el( 'code', {}, data.runner_id || '' ) );
		tr.appendChild( runner );
		cell( tr, document.createTextNode( new Date().toISOString() ) );
		cell( tr, null );
		body.insertBefore( tr, body.firstChild );
		return tr;
	}

	function onRunnerEvent( ev ) {
		remember( ev );
		var data;
		try {
			data = JSON.parse( ev.data );
		} catch ( e ) {
			return;
		}
		if ( ! data || ! data.runner_id ) {
			return;
		}
		var state = ev.type.replace( 'runner.', '' );
		if ( state === 'online' ) {
			state = 'idle';
		}
		var rows = rowsFor( 'data-runner-id', String( data.runner_id ) );
		for ( var i = 0; i < rows.length; i++ ) {
			var el = rows[ i ].querySelector( '[data-dap-runner-state]' );
			if ( el ) {
				el.textContent = label( state );
				el.className = 'dap-status dap-status-' + state;
			}
		}
	}

	function remember( ev ) {
		if ( ev.lastEventId ) {
			lastEventId = ev.lastEventId;
		}
	}

	function ticket() {
		return fetch( cfg.ticketUrl, {
			method: 'POST',
			credentials: 'same-origin',
			headers: { 'X-WP-Nonce': cfg.restNonce, Accept: 'application/json' }
		} ).then( function ( res ) {
			if ( ! res.ok ) {
				throw new Error( 'ticket ' + res.status );
			}
			return res.json();
		} ).then( function ( body ) {
			if ( ! body || ! body.ticket ) {
				throw new Error( 'no ticket' );
			}
			return body.ticket;
		} );
	}

	function scheduleReconnect() {
		if ( retryTimer ) {
			return;
		}
		retryTimer = setTimeout( function () {
			retryTimer = null;
			connect();
		}, retryMs );
		retryMs = Math.min( retryMs * 2, 30000 );
	}

	function connect() {
		setState( cfg.i18n.connecting, 'connecting' );
		ticket().then( function ( t ) {
			var url = cfg.serverUrl + '/api/v1/events?ticket=' + encodeURIComponent( t );
			if ( lastEventId ) {
				url += '&last_event_id=' + encodeURIComponent( lastEventId );
			}
			source = new EventSource( url );
			source.onopen = function () {
				retryMs = 1000;
				setState( cfg.i18n.live, 'live' );
			};
			source.onerror = function () {
				// The ticket in the URL may have expired: never let EventSource retry with it.
				source.close();
				source = null;
				setState( cfg.i18n.reconnecting, 'reconnecting' );
				scheduleReconnect();
			};
			TASK_EVENTS.forEach( function ( name ) {
				source.addEventListener( name, onTaskEvent );
			} );
			RUNNER_EVENTS.forEach( function ( name ) {
				source.addEventListener( name, onRunnerEvent );
			} );
		} ).catch( function () {
			setState( cfg.i18n.noTicket, 'error' );
			scheduleReconnect();
		} );
	}

	if ( document.readyState === 'loading' ) {
		document.addEventListener( 'DOMContentLoaded', connect );
	} else {
		connect();
	}
}() );
