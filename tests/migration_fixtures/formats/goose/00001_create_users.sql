-- +goose Up
CREATE TABLE users (
    id INTEGER PRIMARY KEY,
    email TEXT NOT NULL UNIQUE,
    updated_at TEXT
);

-- +goose StatementBegin
CREATE TRIGGER users_touch AFTER UPDATE OF email ON users
BEGIN
    UPDATE users SET updated_at = 'touched' WHERE id = NEW.id;
END;
-- +goose StatementEnd

-- +goose Down
DROP TRIGGER users_touch;
DROP TABLE users;
