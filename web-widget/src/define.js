// For script-tag users: registers <dap-task> on import and re-exports the module's API.
//   <script type="module" src="https://cdn.example/dap-task.define.min.js"></script>
import { define } from './dap-task.js';

define();

export * from './dap-task.js';
