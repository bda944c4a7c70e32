"""Several threads sharing one AppDatabase and the same Statement objects."""

from __future__ import annotations

import threading

import appdb
from conftest import open_snapshots


def test_threads_share_statements(small: appdb.AppDatabase) -> None:
    insert = small.prepare("INSERT INTO t (name, score) VALUES (?, ?)")
    point = small.prepare("SELECT name FROM t WHERE id = ?")
    scan = small.prepare("SELECT id FROM t WHERE id <= 5 ORDER BY id", row_type="tuple")
    errors: list[BaseException] = []
    per_thread = 200

    def work(n: int) -> None:
        try:
            for i in range(per_thread):
                assert point.get(1) == {"name": "a"}
                assert [r[0] for r in scan.iterate()] == [1, 2, 3, 4, 5]
                if i % 2:
                    insert.run(f"thread{n}", i)
                else:

                    def both(db: appdb.AppDatabase, i: int = i) -> None:
                        insert.run(f"thread{n}", i)
                        try:
                            with db.transaction():
                                insert.run("never", -1)
                                raise LookupError
                        except LookupError:
                            pass

                    small.transaction(both)
                assert small.prepare("SELECT name FROM t WHERE id = ?") is point
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    counts = small.prepare("SELECT name, count(*) AS n FROM t WHERE id > 5 GROUP BY name ORDER BY name").all()
    assert counts == [{"name": f"thread{n}", "n": per_thread} for n in range(8)]
    assert open_snapshots(small) == 0
