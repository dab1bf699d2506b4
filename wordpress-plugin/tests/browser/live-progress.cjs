/**
 * Browser test in headless Chromium against the real WordPress, a real dap-server and a real
 * dap-runner (all started by scripts/test-wordpress.sh):
 *  - an administrator opens Data Analysis → Tasks (live feed connected), creates a task from the
 *    New task form in a second tab, and the Tasks tab — never reloaded — shows the task's row,
 *    its progress bar moving at least twice, reaching 100 % and "completed";
 *  - the result view shows the result table and the chart;
 *  - the New task form refills its column pickers from the dataset's schema without a reload
 *    and shows only the options of the chosen operation and model;
 *  - a runner with one slot kept busy by a long task (created over REST by this harness):
 *    a task targeted at it from the form is refused with "Runner slowpoke is busy with task …";
 *  - a 300 (linear regression) task from the form: its metrics and coefficients in the result
 *    view; a 400 html export built with the filter builder: its report inside the sandboxed
 *    iframe; an artifact link downloads for an editor (dap_view_results);
 *  - a subscriber sees no Data Analysis menu and is refused the page;
 *  - the API key appears in no HTML/JS/JSON the browser received from WordPress.
 * Env: WP_URL, DAP_URL, DAP_KEY, SCREENSHOT_DIR, PLAYWRIGHT_CORE (path of the playwright-core package).
 * DAP_KEY is used by this harness only (to create the long task and to look for leaks).
 */
'use strict';

const { chromium } = require( process.env.PLAYWRIGHT_CORE || 'playwright-core' );
const path = require( 'path' );

const WP = process.env.WP_URL;
const DAP = process.env.DAP_URL;
const KEY = process.env.DAP_KEY;
const SHOTS = process.env.SCREENSHOT_DIR;

function check( cond, message ) {
	if ( ! cond ) {
		throw new Error( 'FAILED: ' + message );
	}
	console.log( 'ok - ' + message );
}

/** The harness's own REST call to dap-server (never from the browser). */
async function api( method, path, body ) {
	const res = await fetch( DAP + path, {
		method,
		headers: { Authorization: 'Bearer ' + KEY, 'Content-Type': 'application/json' },
		body: body ? JSON.stringify( body ) : undefined,
	} );
	const json = await res.json();
	if ( ! res.ok ) {
		throw new Error( method + ' ' + path + ': ' + res.status + ' ' + JSON.stringify( json ) );
	}
	return json;
}

async function waitFor( what, fn, timeoutMs ) {
	const end = Date.now() + timeoutMs;
	for ( ;; ) {
		const value = await fn();
		if ( value ) {
			return value;
		}
		if ( Date.now() > end ) {
			throw new Error( 'FAILED: timed out waiting for ' + what );
		}
		await new Promise( ( r ) => setTimeout( r, 200 ) );
	}
}

/** Submit the New task form; returns the id from the "Task … created." flash on the Tasks page. */
async function submitTask( page, what ) {
	await Promise.all( [ page.waitForURL( /page=dap-tasks/ ), page.click( '#submit' ) ] );
	const flash = await page.textContent( '.dap-flash' );
	const match = /Task (\S+) created/.exec( flash || '' );
	check( match, 'the New task form created ' + what + ': ' + ( flash || '' ).trim() );
	return match[ 1 ];
}

async function login( context, user, password ) {
	const page = await context.newPage();
	await page.goto( WP + '/wp-login.php' );
	await page.fill( '#user_login', user );
	await page.fill( '#user_pass', password );
	await Promise.all( [ page.waitForURL( /wp-admin/ ), page.click( '#wp-submit' ) ] );
	return page;
}

( async () => {
	const browser = await chromium.launch( {
		executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
		headless: true,
		args: [ '--no-sandbox', '--disable-gpu', '--disable-background-networking', '--disable-component-update', '--disable-sync', '--no-first-run' ],
	} );
	const reads = [];
	const leaks = [];
	let received = 0;
	const watch = ( context ) => context.on( 'response', ( res ) => {
		if ( ! res.url().startsWith( WP ) ) {
			return;
		}
		reads.push( res.text().then( ( body ) => {
			received++;
			if ( body.includes( KEY ) ) {
				leaks.push( res.url() );
			}
		}, () => {} ) ); // Redirects have no body.
	} );

	try {
		// ---- administrator: live progress without reload
		const admin = await browser.newContext( { viewport: { width: 1280, height: 900 } } );
		watch( admin );
		const tasks = await login( admin, 'admin', 'admin-password' );
		tasks.on( 'console', ( m ) => console.log( '  [page] ' + m.text() ) );
		await tasks.goto( WP + '/wp-admin/admin.php?page=dap-tasks' );
		await tasks.waitForSelector( '[data-dap-live-state][data-state="live"]', { timeout: 20000 } );
		check( true, 'Tasks page connected to the live feed' );
		await tasks.evaluate( () => {
			window.__dapNoReload = true;
			window.__dapSeen = [];
			new MutationObserver( ( mutations ) => {
				for ( const m of mutations ) {
					const row = m.target.closest && m.target.closest( '[data-task-id]' );
					if ( row && m.attributeName === 'aria-valuenow' ) {
						window.__dapSeen.push( { id: row.getAttribute( 'data-task-id' ), progress: Number( m.target.getAttribute( 'aria-valuenow' ) ) } );
					}
					if ( row && m.attributeName === 'data-status' ) {
						window.__dapSeen.push( { id: row.getAttribute( 'data-task-id' ), status: row.getAttribute( 'data-status' ) } );
					}
				}
			} ).observe( document.body, { subtree: true, attributes: true, attributeFilter: [ 'aria-valuenow', 'data-status' ] } );
		} );

		const form = await admin.newPage();
		await form.goto( WP + '/wp-admin/admin.php?page=dap-new-task' );
		await form.selectOption( '#dap-operation', '100' );
		await form.selectOption( '#dap-dataset', 'sales' );
		await form.selectOption( '#dap-columns', [ 'region', 'revenue' ] );
		await form.fill( '#dap-limit', '12' );
		await Promise.all( [ form.waitForURL( /page=dap-tasks/ ), form.click( '#submit' ) ] );
		const flash = await form.textContent( '.dap-flash' );
		const match = /Task (\S+) created/.exec( flash || '' );
		check( match, 'the New task form created a task: ' + ( flash || '' ).trim() );
		const taskId = match[ 1 ];

		await tasks.waitForSelector( `tr[data-task-id="${ taskId }"][data-status="completed"]`, { timeout: 30000 } );
		const seen = await tasks.evaluate( ( id ) => window.__dapSeen.filter( ( e ) => e.id === id ), taskId );
		const progress = seen.filter( ( e ) => 'progress' in e ).map( ( e ) => e.progress );
		console.log( '  progress seen live: ' + JSON.stringify( progress ) + ', statuses: ' + JSON.stringify( seen.filter( ( e ) => e.status ).map( ( e ) => e.status ) ) );
		check( await tasks.evaluate( () => window.__dapNoReload === true ), 'the Tasks page was not reloaded' );
		check( new Set( progress.filter( ( p ) => p > 0 && p < 100 ) ).size >= 2, 'the progress bar moved at least twice before finishing' );
		check( progress.every( ( p, i ) => i === 0 || p >= progress[ i - 1 ] ), 'progress never went down' );
		check( progress[ progress.length - 1 ] === 100, 'the progress bar reached 100 %' );
		const row = tasks.locator( `tr[data-task-id="${ taskId }"]` );
		check( ( await row.locator( '[data-dap-status]' ).textContent() ).trim() === 'Completed', 'the row says Completed' );
		check( ( await row.locator( '.dap-progress-value' ).textContent() ).trim() === '100%', 'the row shows 100%' );
		check( ( await row.locator( '.dap-progress-bar' ).evaluate( ( e ) => e.style.width ) ) === '100%', 'the bar is filled to 100%' );
		// Let the bar's CSS width transition (0.3 s) finish so the screenshot shows the final state.
		await tasks.waitForTimeout( 500 );
		await tasks.screenshot( { path: path.join( SHOTS, 'wordpress-live-progress.png' ), fullPage: true } );

		// ---- result view
		const result = await admin.newPage();
		await result.goto( WP + '/wp-admin/admin.php?page=dap-tasks&task_id=' + encodeURIComponent( taskId ) );
		const headers = await result.locator( 'table.dap-result thead th' ).allTextContents();
		check( JSON.stringify( headers ) === JSON.stringify( [ 'region', 'revenue' ] ), 'result table has the chosen columns ' + JSON.stringify( headers ) );
		check( ( await result.locator( 'table.dap-result tbody tr' ).count() ) === 12, 'result table has 12 rows' );
		check( ( await result.locator( 'svg .dap-chart-bar' ).count() ) === 12, 'result chart has 12 bars' );
		await result.screenshot( { path: path.join( SHOTS, 'wordpress-result-view.png' ), fullPage: true } );

		// ---- New task form: schema-driven pickers, only the options that apply, no reload
		const form2 = await admin.newPage();
		await form2.goto( WP + '/wp-admin/admin.php?page=dap-new-task' );
		await form2.waitForSelector( '[data-dap-task-form][data-dap-ready="1"]' );
		await form2.evaluate( () => {
			window.__dapNoReload = true;
		} );
		const optionValues = ( sel ) => form2.$$eval( sel + ' option', ( os ) => os.map( ( o ) => o.value ).filter( Boolean ) );
		await form2.selectOption( '#dap-operation', '200' );
		check( JSON.stringify( await optionValues( '#dap-columns' ) ) === JSON.stringify( [ 'date', 'region', 'product', 'channel', 'units', 'unit_price', 'revenue' ] ), 'the column picker lists the dataset schema' );
		check( JSON.stringify( await optionValues( 'select[name="where[0][column]"]' ) ) === JSON.stringify( await optionValues( '#dap-columns' ) ), 'the condition column picker lists the same columns' );
		check( await form2.isHidden( '#dap-model' ) && await form2.isVisible( 'select[name="where[0][op]"]' ), 'operation 200 shows the filter builder, not the model options' );
		await form2.selectOption( '#dap-operation', '300' );
		check( JSON.stringify( await optionValues( '#dap-features' ) ) === JSON.stringify( [ 'units', 'unit_price', 'revenue' ] ), 'the features picker offers the numeric columns only' );
		await form2.selectOption( '#dap-model', 'kmeans' );
		check( await form2.isVisible( '#dap-k' ) && await form2.isHidden( '#dap-max-depth' ), 'k-means shows k, hides the tree depth' );
		await form2.selectOption( '#dap-model', 'decision_tree' );
		check( await form2.isHidden( '#dap-k' ) && await form2.isVisible( '#dap-max-depth' ) && await form2.isDisabled( '#dap-k' ), 'a decision tree shows its depth; k is hidden and not posted' );
		await form2.selectOption( '#dap-operation', '200' );
		await form2.click( '[data-dap-add="where"]' );
		await form2.selectOption( 'select[name="where[1][op]"]', 'between' );
		check( await form2.isVisible( 'input[name="where[1][value2]"]' ), 'an added "between" condition asks for a high value' );
		check( await form2.evaluate( () => window.__dapNoReload === true ), 'the form was not reloaded' );

		// ---- a busy runner: slowpoke (1 slot) runs a long task; a task aimed at it is refused
		const runners = ( await api( 'GET', '/api/v1/runners' ) ).runners;
		const slow = runners.find( ( r ) => r.name === 'slowpoke' );
		const long = await api( 'POST', '/api/v1/tasks', {
			operation_code: 300,
			params: { dataset: 'sales', model: 'decision_tree', features: [ 'units', 'unit_price' ], target: 'region' },
			runner_id: slow.runner_id,
			queue: true,
		} );
		await waitFor( 'the long task to run on slowpoke', async () => ( await api( 'GET', '/api/v1/tasks/' + long.task_id ) ).status === 'running', 30000 );
		await form2.goto( WP + '/wp-admin/admin.php?page=dap-new-task' );
		await form2.selectOption( '#dap-operation', '100' );
		await form2.selectOption( '#dap-runner', slow.runner_id );
		await Promise.all( [ form2.waitForURL( /page=dap-new-task/ ), form2.click( '#submit' ) ] );
		const refusal = ( await form2.textContent( '.dap-flash' ) || '' ).trim();
		console.log( '  refusal: ' + refusal );
		check( refusal.includes( 'Runner slowpoke is busy with task ' + long.task_id ), 'the form shows "Runner slowpoke is busy with task ' + long.task_id + '"' );
		await form2.screenshot( { path: path.join( SHOTS, 'wordpress-runner-busy.png' ), fullPage: true } );

		// ---- 300 from the form: linear regression, metrics in the result view
		await form2.selectOption( '#dap-operation', '300' );
		await form2.selectOption( '#dap-model', 'linear_regression' );
		await form2.selectOption( '#dap-features', [ 'units', 'unit_price' ] );
		await form2.selectOption( '#dap-target', 'revenue' );
		await form2.fill( '#dap-test-fraction', '0.25' );
		await form2.fill( '#dap-seed', '7' );
		const modelId = await submitTask( form2, 'a 300 linear regression task' );
		await tasks.waitForSelector( `tr[data-task-id="${ modelId }"][data-status="completed"]`, { timeout: 90000 } );
		check( true, 'the model task completed (seen live on the Tasks page)' );
		const model = await admin.newPage();
		await model.goto( WP + '/wp-admin/admin.php?page=dap-tasks&task_id=' + encodeURIComponent( modelId ) );
		const metric = async ( key ) => ( await model.textContent( `table.dap-metrics tr[data-metric="${ key }"] td` ) || '' ).trim();
		const r2 = Number( await metric( 'r2' ) );
		const rmse = Number( await metric( 'rmse' ) );
		const mae = Number( await metric( 'mae' ) );
		console.log( `  metrics: R²=${ r2 } RMSE=${ rmse } MAE=${ mae }` );
		check( r2 > 0.5 && r2 <= 1 && rmse > 0 && mae > 0 && mae <= rmse, 'the result view shows R², RMSE and MAE of the fit' );
		const coefficients = await model.locator( 'table.dap-coefficients tbody th' ).allTextContents();
		check( JSON.stringify( coefficients ) === JSON.stringify( [ 'units', 'unit_price', '(intercept)' ] ), 'the coefficients table lists the features and the intercept' );
		check( ( await model.locator( '.dap-artifacts a[data-dap-artifact="predictions.csv"]' ).count() ) === 1, 'the predictions are offered for download' );
		await model.screenshot( { path: path.join( SHOTS, 'wordpress-model-metrics.png' ), fullPage: true } );

		// ---- 400 html from the form, rows chosen with the filter builder; report in the iframe
		await form2.goto( WP + '/wp-admin/admin.php?page=dap-new-task' );
		await form2.selectOption( '#dap-operation', '400' );
		await form2.selectOption( '#dap-format', 'html' );
		await form2.fill( '#dap-title', 'Northern sales' );
		await form2.selectOption( 'select[name="where[0][column]"]', 'region' );
		await form2.selectOption( 'select[name="where[0][op]"]', 'eq' );
		await form2.fill( 'input[name="where[0][value]"]', 'North' );
		await form2.click( '[data-dap-add="where"]' );
		await form2.selectOption( 'select[name="where[1][column]"]', 'units' );
		await form2.selectOption( 'select[name="where[1][op]"]', 'between' );
		await form2.fill( 'input[name="where[1][value]"]', '2' );
		await form2.fill( 'input[name="where[1][value2]"]', '5' );
		await form2.selectOption( 'select[name="sort[0][column]"]', 'revenue' );
		await form2.selectOption( 'select[name="sort[0][dir]"]', 'desc' );
		await form2.fill( '#dap-limit', '50' );
		const reportId = await submitTask( form2, 'a 400 html export' );
		const sent = await api( 'GET', '/api/v1/tasks/' + reportId );
		console.log( '  params sent: ' + JSON.stringify( sent.params ) );
		check( JSON.stringify( sent.params.where ) === JSON.stringify( { all: [ { column: 'region', op: 'eq', value: 'North' }, { column: 'units', op: 'between', value: [ 2, 5 ] } ] } ), 'the filter builder sent both conditions, typed' );
		await tasks.waitForSelector( `tr[data-task-id="${ reportId }"][data-status="completed"]`, { timeout: 90000 } );
		const report = await admin.newPage();
		await report.goto( WP + '/wp-admin/admin.php?page=dap-tasks&task_id=' + encodeURIComponent( reportId ) );
		const iframe = report.locator( 'iframe.dap-report' );
		check( ( await iframe.getAttribute( 'sandbox' ) ) === '', 'the report iframe is sandboxed (no scripts, no same origin)' );
		const src = await iframe.getAttribute( 'src' );
		check( src.startsWith( WP + '/wp-admin/admin-post.php?action=dap_report' ), 'the report comes from WordPress, not from the DAP server' );
		const frame = report.frameLocator( 'iframe.dap-report' );
		await frame.locator( 'body' ).waitFor();
		const body = await frame.locator( 'body' ).innerText();
		check( body.includes( 'Northern sales' ), 'the report (title "Northern sales") shows inside the iframe' );
		check( ( await frame.locator( 'svg' ).count() ) >= 1, 'the report carries its inline SVG chart' );
		await report.screenshot( { path: path.join( SHOTS, 'wordpress-report.png' ), fullPage: true } );

		// ---- an editor (dap_view_results) downloads an artifact through WordPress
		const editor = await browser.newContext();
		watch( editor );
		const edPage = await login( editor, 'editor1', 'editor-password' );
		await edPage.goto( WP + '/wp-admin/admin.php?page=dap-tasks&task_id=' + encodeURIComponent( reportId ) );
		const href = await edPage.getAttribute( '.dap-artifacts a[data-dap-artifact="report.html"]', 'href' );
		const hop = await edPage.request.get( href, { maxRedirects: 0 } );
		const location = hop.headers().location || '';
		check( hop.status() === 302 && location.startsWith( DAP + '/api/v1/tasks/' + reportId + '/artifacts/report.html?' ), 'the download link redirects to a signed URL on the DAP server' );
		check( ! location.includes( KEY ), 'the signed URL does not carry the API key' );
		const file = await edPage.request.get( href );
		check( file.status() === 200 && ( await file.text() ).includes( 'Northern sales' ), 'the editor downloaded report.html' );

		// ---- subscriber
		const sub = await browser.newContext();
		watch( sub );
		const subPage = await login( sub, 'subscriber1', 'subscriber-password' );
		await subPage.goto( WP + '/wp-admin/profile.php' );
		check( ( await subPage.locator( '#adminmenu' ).count() ) === 1, 'subscriber sees the admin menu' );
		check( ( await subPage.locator( '#toplevel_page_dap-tasks' ).count() ) === 0, 'subscriber sees no Data Analysis menu' );
		const refused = await subPage.goto( WP + '/wp-admin/admin.php?page=dap-tasks' );
		check( refused.status() === 403, 'subscriber is refused the Tasks page (HTTP ' + refused.status() + ')' );
		check( ( await subPage.locator( 'tr[data-task-id]' ).count() ) === 0, 'subscriber sees no task' );

		await Promise.all( reads );
		check( received > 10, 'read ' + received + ' responses from WordPress' );
		check( leaks.length === 0, 'the API key is in no page, script or JSON WordPress sent' + ( leaks.length ? ': ' + leaks.join( ', ' ) : '' ) );
	} finally {
		await browser.close();
	}
} )().catch( ( err ) => {
	console.error( err && err.stack ? err.stack : err );
	process.exit( 1 );
} );
