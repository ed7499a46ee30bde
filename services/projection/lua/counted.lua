--! use steps
-- Record where a member is counted (`ci`), only by the writer holding its change count.
-- KEYS: the member's profile hash, its change count (same hash tag). ARGV: industry now
-- ('' = none), the change count the writer saw. Returns 1 if written.
return record_counted(KEYS[1], KEYS[2], ARGV[1], ARGV[2])
