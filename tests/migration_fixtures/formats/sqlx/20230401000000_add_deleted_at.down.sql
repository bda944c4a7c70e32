alter table history drop column deleted_at;
