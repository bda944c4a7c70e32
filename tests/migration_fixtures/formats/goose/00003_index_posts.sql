-- +goose NO TRANSACTION
-- +goose Up
CREATE INDEX posts_by_user ON posts (user_id);
VACUUM;

-- +goose Down
DROP INDEX posts_by_user;
