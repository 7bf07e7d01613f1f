-- Models sized by aspect ratio render 1024 px on the short side (CONTRACT §4), so a
-- width:height beyond 8:1 asks for an image over 8192 px that no model makes: the
-- request must fail at once with a 400, not after queueing. flux-1.1-pro-ultra allowed
-- 256..2752 (up to 43:4); its smallest side becomes 2752 / 8 = 344.

update public.models
set min_width = greatest(min_width, 344), min_height = greatest(min_height, 344),
    updated_at = now()
where replicate_id = 'black-forest-labs/flux-1.1-pro-ultra';
