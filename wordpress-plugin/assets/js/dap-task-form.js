/**
 * The New task form, client side: shows only the fields that apply to the chosen operation,
 * model and format; refills every column picker from the chosen dataset's schema (or from the
 * columns of the earlier task used as input) without a reload; adds and removes rows of the
 * filter builder (conditions, aggregations, sort keys). Fields that do not apply are disabled,
 * so they are not posted. It validates nothing: DAP_Task_Form does that in PHP.
 * No dependencies.
 */
( function () {
	'use strict';

	var form = document.querySelector( '[data-dap-task-form]' );
	if ( ! form ) {
		return;
	}
	var operation = form.querySelector( '#dap-operation' );
	var dataset = form.querySelector( '#dap-dataset' );
	var inputTask = form.querySelector( '#dap-input-task' );
	var model = form.querySelector( '#dap-model' );
	var format = form.querySelector( '#dap-format' );

	function each( list, fn ) {
		Array.prototype.forEach.call( list, fn );
	}

	function source() {
		var checked = form.querySelector( 'input[name="source"]:checked' );
		return checked ? checked.value : 'dataset';
	}

	function isNumeric( dtype ) {
		return /^[iuf](8|16|32|64|128)$/.test( dtype || '' );
	}

	function parseColumns( option ) {
		if ( ! option ) {
			return [];
		}
		try {
			var list = JSON.parse( option.getAttribute( 'data-columns' ) || '[]' );
			return Array.isArray( list ) ? list : [];
		} catch ( e ) {
			return [];
		}
	}

	/** Columns of the current input: the dataset's schema or the earlier task's output. */
	function currentColumns() {
		var op = operation.value;
		if ( op !== '100' && source() === 'task' ) {
			return parseColumns( inputTask.options[ inputTask.selectedIndex ] );
		}
		return parseColumns( dataset.options[ dataset.selectedIndex ] );
	}

	/** Output names of the aggregations, which select and sort may use when grouping. */
	function aggregationNames() {
		var names = [];
		if ( operation.value !== '200' && operation.value !== '400' ) {
			return names;
		}
		if ( ! form.querySelector( '#dap-group-by' ) || ! form.querySelector( '#dap-group-by' ).selectedOptions.length ) {
			return names;
		}
		each( form.querySelectorAll( '[data-dap-row="agg"]' ), function ( row ) {
			var fn = row.querySelector( 'select[name$="[fn]"]' ).value;
			if ( ! fn ) {
				return;
			}
			var column = row.querySelector( 'select[name$="[column]"]' ).value;
			var as = row.querySelector( 'input[name$="[as]"]' ).value.trim();
			names.push( as || ( column ? column + '_' + fn : 'count' ) );
		} );
		return names;
	}

	function fillPicker( select, columns, extra ) {
		var kind = select.getAttribute( 'data-dap-columns' );
		var keep = {};
		each( select.options, function ( o ) {
			if ( o.selected && o.value ) {
				keep[ o.value ] = true;
			}
		} );
		while ( select.firstChild ) {
			select.removeChild( select.firstChild );
		}
		var empty = select.getAttribute( 'data-dap-empty' );
		if ( empty ) {
			select.appendChild( new Option( empty, '' ) );
		}
		var list = columns.slice();
		if ( extra && select.hasAttribute( 'data-dap-output' ) ) {
			extra.forEach( function ( name ) {
				list.push( { name: name, dtype: '' } );
			} );
		}
		var seen = {};
		list.forEach( function ( col ) {
			if ( ! col || ! col.name || seen[ col.name ] ) {
				return;
			}
			seen[ col.name ] = true;
			if ( col.dtype && kind === 'numeric' && ! isNumeric( col.dtype ) ) {
				return;
			}
			if ( col.dtype && kind === 'text' && col.dtype !== 'str' ) {
				return;
			}
			var label = col.name + ( col.dtype ? ' (' + col.dtype + ')' : '' );
			var option = new Option( label, col.name, false, !! keep[ col.name ] );
			select.appendChild( option );
		} );
	}

	function fillPickers() {
		var columns = currentColumns();
		var extra = aggregationNames();
		each( form.querySelectorAll( 'select.dap-column-picker' ), function ( select ) {
			fillPicker( select, columns, extra );
		} );
	}

	function applies( row ) {
		var ops = row.getAttribute( 'data-dap-ops' );
		if ( ops && ops.split( ' ' ).indexOf( operation.value ) === -1 ) {
			return false;
		}
		var models = row.getAttribute( 'data-dap-models' );
		if ( models && models.split( ' ' ).indexOf( model.value ) === -1 ) {
			return false;
		}
		if ( row.classList.contains( 'dap-title-row' ) && format.value !== 'html' ) {
			return false;
		}
		if ( row.classList.contains( 'dap-dataset-row' ) && operation.value !== '100' && source() === 'task' ) {
			return false;
		}
		return true;
	}

	function setEnabled( container, on ) {
		each( container.querySelectorAll( 'input, select, textarea, button' ), function ( field ) {
			field.disabled = ! on;
		} );
	}

	function refresh() {
		each( form.querySelectorAll( 'tr.dap-field' ), function ( row ) {
			var on = applies( row );
			row.hidden = ! on;
			setEnabled( row, on );
		} );
		var task = form.querySelector( '[data-dap-source="task"]' );
		if ( task ) {
			task.hidden = source() !== 'task';
			inputTask.disabled = source() !== 'task' || operation.value === '100';
		}
		each( form.querySelectorAll( 'input[name="source"][value="task"]' ), function ( radio ) {
			if ( inputTask.options.length < 2 ) {
				radio.disabled = true;
			}
		} );
		each( form.querySelectorAll( '[data-dap-row="where"]' ), showValues );
	}

	/** A condition row shows one value, two (between) or none (is_null / not_null). */
	function showValues( row ) {
		var op = row.querySelector( '[data-dap-op]' ).value;
		var value = row.querySelector( '[data-dap-value]' );
		var second = row.querySelector( '[data-dap-value2]' );
		var none = op === 'is_null' || op === 'not_null';
		value.hidden = none;
		second.hidden = op !== 'between';
		second.querySelector( 'input' ).disabled = op !== 'between' || value.disabled;
		value.placeholder = op === 'in' ? 'a, b, c' : ( op === 'between' ? 'low value' : 'value' );
	}

	/** Add a row like the first one of its kind, with the next index in its field names. */
	function addRow( kind ) {
		var holder = form.querySelector( '[data-dap-rows="' + kind + '"]' );
		var rows = holder.querySelectorAll( '[data-dap-row]' );
		var index = Number( holder.getAttribute( 'data-dap-next' ) || rows.length );
		holder.setAttribute( 'data-dap-next', String( index + 1 ) );
		var copy = rows[ 0 ].cloneNode( true );
		each( copy.querySelectorAll( '[name]' ), function ( field ) {
			field.name = field.name.replace( /\[\d+\]/, '[' + index + ']' );
			if ( field.tagName === 'SELECT' ) {
				field.selectedIndex = 0;
			} else {
				field.value = '';
			}
		} );
		holder.appendChild( copy );
		refresh();
		return copy;
	}

	form.addEventListener( 'click', function ( ev ) {
		var add = ev.target.closest( '[data-dap-add]' );
		if ( add ) {
			ev.preventDefault();
			addRow( add.getAttribute( 'data-dap-add' ) );
			return;
		}
		var remove = ev.target.closest( '[data-dap-remove]' );
		if ( remove ) {
			ev.preventDefault();
			var row = remove.closest( '[data-dap-row]' );
			var holder = row.parentNode;
			if ( holder.querySelectorAll( '[data-dap-row]' ).length > 1 ) {
				holder.removeChild( row );
			} else {
				each( row.querySelectorAll( '[name]' ), function ( field ) {
					if ( field.tagName === 'SELECT' ) {
						field.selectedIndex = 0;
					} else {
						field.value = '';
					}
				} );
			}
			refresh();
		}
	} );

	form.addEventListener( 'change', function ( ev ) {
		var t = ev.target;
		if ( t === dataset || t === inputTask || t.name === 'source' || t === operation ) {
			refresh();
			fillPickers();
		} else if ( t.matches( '#dap-group-by, select[name$="[fn]"], [data-dap-row="agg"] select, [data-dap-row="agg"] input' ) ) {
			fillPickers();
		} else {
			refresh();
		}
	} );

	// select and sort may name the grouped output's columns too.
	each( form.querySelectorAll( '#dap-columns, [data-dap-row="sort"] select.dap-column-picker' ), function ( select ) {
		select.setAttribute( 'data-dap-output', '' );
	} );
	refresh();
	fillPickers();
	form.setAttribute( 'data-dap-ready', '1' );
}() );
