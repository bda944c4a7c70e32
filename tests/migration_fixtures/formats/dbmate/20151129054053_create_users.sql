-- migrate:up
create table users (
  id integer primary key,
  name text not null,
  email text
);

-- migrate:down
drop table users;
