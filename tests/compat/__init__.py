"""The old apps' calls replayed as PostgREST runs them on Supabase: each test names the
app file (in the old repository, under picture/) whose statements it replays."""
