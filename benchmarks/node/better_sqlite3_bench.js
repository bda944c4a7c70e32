#!/usr/bin/env node
// better-sqlite3 12, the engine of appdb's original TypeScript design, on the trials of
// benchmarks/run.py. Started by bench_node.py, never by hand:
//
//   node better_sqlite3_bench.js --probe MODULES_DIR    versions as JSON (can it be loaded?)
//   node --expose-gc better_sqlite3_bench.js SPEC.json  run the trials, samples as JSON on stdout
//
// SPEC (written by bench_node.py) carries everything that must match the Python contenders:
// the database copy, appdb's pragma statements, the SQL, the row, and per trial the batch size
// the harness calibrated, its repeats and its random rowids. Each op below is better-sqlite3's
// fastest idiomatic code: statements prepared once outside the timed loop, rows as its default
// plain objects (appdb's dicts), writes through .run() (its result carries changes and
// lastInsertRowid, as appdb's RunResult does) and db.transaction() wrappers. Timing mirrors
// bench_measure.time_batch: a full garbage collection before every batch (global.gc, hence
// --expose-gc), then CPU time and wall time around one call of the batch.
// Progress goes to stderr; stdout carries one JSON document and nothing else.

'use strict';

const fs = require('fs');
const path = require('path');

function load(modulesDir) {
  const Database = require(path.join(modulesDir, 'better-sqlite3'));
  const version = require(path.join(modulesDir, 'better-sqlite3', 'package.json')).version;
  return { Database, version };
}

function versions(Database, version, db) {
  return {
    better_sqlite3: version,
    node: process.versions.node,
    sqlite: db.prepare('SELECT sqlite_version() AS v').get().v,
  };
}

function probe(modulesDir) {
  const { Database, version } = load(modulesDir);
  const db = new Database(':memory:'); // loads the native addon: fails here on an ABI mismatch
  const out = versions(Database, version, db);
  db.close();
  process.stdout.write(JSON.stringify(out) + '\n');
}

// One factory per trial key; each returns a zero-argument function running a whole batch.
function makeOps(db, spec) {
  const sql = spec.sql;
  const r = spec.row;
  // bench_workload.ROW; the blob arrives as hex because JSON has no bytes.
  const row = [r[0], r[1], r[2], r[3], Buffer.from(r[4], 'hex')];
  const getStmt = db.prepare(sql.get);
  const allStmt = db.prepare(sql.all);
  const insertStmt = db.prepare(sql.insert);
  return {
    get(t) {
      const ids = t.ids;
      return () => {
        for (const id of ids) getStmt.get(id);
      };
    },
    all(t) {
      const starts = t.ids;
      return () => {
        for (const start of starts) allStmt.all(start);
      };
    },
    iterate(t) {
      const starts = t.ids;
      return () => {
        for (const start of starts) {
          // eslint-disable-next-line no-unused-vars
          for (const _row of allStmt.iterate(start));
        }
      };
    },
    get_in_read_txn(t) {
      const ids = t.ids;
      const read = db.transaction((list) => {
        for (const id of list) getStmt.get(id);
      });
      return () => read.deferred(ids); // BEGIN DEFERRED ... COMMIT, as appdb's mode="deferred"
    },
    insert(t) {
      const n = t.ops;
      return () => {
        for (let i = 0; i < n; i++) insertStmt.run(row);
      };
    },
    insert_in_txn(t) {
      const n = t.ops;
      const write = db.transaction((count) => {
        for (let i = 0; i < count; i++) insertStmt.run(row);
      });
      return () => write.immediate(n); // BEGIN IMMEDIATE, appdb's default transaction mode
    },
    txn100(t) {
      const n = t.ops;
      const write = db.transaction(() => {
        for (let i = 0; i < 100; i++) insertStmt.run(row);
      });
      return () => {
        for (let i = 0; i < n; i++) write.immediate();
      };
    },
    run_many(t) {
      // better-sqlite3 has no executemany: a transaction looping .run() is its idiom. The
      // total of changes and the last rowid are what appdb's run_many returns.
      const rows = new Array(t.ops).fill(row);
      const write = db.transaction((list) => {
        let changes = 0;
        let info = null;
        for (const item of list) {
          info = insertStmt.run(item);
          changes += info.changes;
        }
        return { changes, lastInsertRowid: info ? info.lastInsertRowid : 0 };
      });
      return () => write.immediate(rows);
    },
    scan() {
      const scanStmt = db.prepare(sql.scan);
      return () => {
        // eslint-disable-next-line no-unused-vars
        for (const _row of scanStmt.iterate());
      };
    },
  };
}

function timeBatch(op) {
  global.gc();
  const cpu = process.cpuUsage();
  const wall = process.hrtime.bigint();
  op();
  const wallEnd = process.hrtime.bigint();
  const used = process.cpuUsage(cpu);
  return [Number(wallEnd - wall) / 1e9, (used.user + used.system) / 1e6];
}

// As Sqlite3Contender.holds_read_snapshot: a second connection commits a row; if this one
// still sees the old count, it kept a read transaction open between operations.
function holdsReadSnapshot(Database, db, spec) {
  const count = db.prepare(spec.sql.probe_count).pluck();
  const before = count.get();
  const other = new Database(spec.path);
  try {
    other.prepare(spec.sql.probe_insert).run();
  } finally {
    other.close();
  }
  return count.get() === before;
}

function checkSnapshot(Database, db, spec, key) {
  if (holdsReadSnapshot(Database, db, spec)) {
    throw new Error(`better-sqlite3 kept a read snapshot open after the '${key}' trial`);
  }
}

function run(specPath) {
  if (typeof global.gc !== 'function') throw new Error('run with node --expose-gc');
  const spec = JSON.parse(fs.readFileSync(specPath, 'utf8'));
  const { Database, version } = load(spec.modules);
  const db = new Database(spec.path);
  const out = { versions: null, trials: {} };
  try {
    for (const statement of spec.pragmas) db.exec(statement);
    const mode = db.pragma('journal_mode', { simple: true });
    if (mode !== 'wal') throw new Error(`journal_mode is ${mode}, expected wal`);
    out.versions = versions(Database, version, db);
    const factories = makeOps(db, spec);
    for (const trial of spec.trials) {
      const begun = process.hrtime.bigint();
      const op = factories[trial.key](trial);
      op(); // warm-up, as the harness does: first-call costs, and V8 compiles the loop
      checkSnapshot(Database, db, spec, trial.key);
      const wall = [];
      const cpu = [];
      for (let i = 0; i < trial.repeats; i++) {
        const [w, c] = timeBatch(op);
        wall.push((w * 1e6) / trial.ops);
        cpu.push((c * 1e6) / trial.ops);
      }
      checkSnapshot(Database, db, spec, trial.key);
      out.trials[trial.key] = { wall_us: wall, cpu_us: cpu };
      const seconds = Number(process.hrtime.bigint() - begun) / 1e9;
      process.stderr.write(`better-sqlite3 ${trial.key}: ${seconds.toFixed(1)} s\n`);
    }
  } finally {
    db.close();
  }
  process.stdout.write(JSON.stringify(out) + '\n');
}

if (process.argv[2] === '--probe') {
  probe(process.argv[3]);
} else {
  run(process.argv[2]);
}
