-- +goose Up
ALTER TABLE users ADD COLUMN name text NOT NULL DEFAULT '';

-- +goose Down
ALTER TABLE users DROP COLUMN name;
