-- migrate:up transaction:false
create index users_email on users (email);
vacuum;

-- migrate:down
drop index users_email;
