/**
 * Browser test in headless Chromium against the real WordPress, a real dap-server and a real
 * dap-runner (all started by scripts/test-wordpress.sh):
 *  - an administrator opens Data Analysis → Tasks (live feed connected), creates a task from the
 *    New task form in a second tab, and the Tasks tab — never reloaded — shows the task's row,
 *    its progress bar moving at least twice, reaching 100 % and "completed";
 *  - the result view shows the result table and the chart;
 *  - a subscriber sees no Data Analysis menu and is refused the page;
 *  - the API key appears in no HTML/JS/JSON the browser received from WordPress.
 * Env: WP_URL, DAP_KEY, SCREENSHOT_DIR, PLAYWRIGHT_CORE (path of the playwright-core package).
 */
'use strict';

const { chromium } = require( process.env.PLAYWRIGHT_CORE || 'playwright-core' );
const path = require( 'path' );

const WP = process.env.WP_URL;
const KEY = process.env.DAP_KEY;
const SHOTS = process.env.SCREENSHOT_DIR;

function check( cond, message ) {
	if ( ! cond ) {
		throw new Error( 'FAILED: ' + message );
	}
	console.log( 'ok - ' + message );
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
		await form.fill( '#dap-columns', 'region,revenue' );
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
