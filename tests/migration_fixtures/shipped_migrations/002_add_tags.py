from appdb import AppDatabase


def up(db: AppDatabase) -> None:
    db.exec("CREATE TABLE tags (note_id INTEGER NOT NULL REFERENCES notes(id), tag TEXT NOT NULL)")


def down(db: AppDatabase) -> None:
    db.exec("DROP TABLE tags")
