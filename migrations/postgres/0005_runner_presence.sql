-- Multi-node (`--cluster`): which server node each runner is connected to (or within its grace
-- period on), as that node last reported it. Every node rewrites its own rows every few
-- seconds; a row not refreshed for a grace period means its node is gone. Used to answer
-- targeted creates for a runner on another node and to requeue the tasks of runners nobody
-- reports any more. Timestamps are the reporting node's clock (epoch ms).
CREATE TABLE runner_presence (
    runner_id  TEXT COLLATE "C" NOT NULL,
    node_id    TEXT COLLATE "C" NOT NULL,
    slots      BIGINT NOT NULL,
    running    BIGINT NOT NULL,
    draining   BOOLEAN NOT NULL,
    connected  BOOLEAN NOT NULL,  -- false while the runner is within its grace period there
    seen_at    BIGINT NOT NULL,
    PRIMARY KEY (runner_id, node_id)
);
CREATE INDEX runner_presence_by_node ON runner_presence (node_id);
