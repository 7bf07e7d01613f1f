-- Sizes (CLIENTS.md §2 item 8): the mobile app offers nine presets (1024x1024 to
-- 1536x640 and 640x1536) for every model, and the old functions refused none. A size
-- outside the model's limits is now fitted to them instead of refused: scaled keeping its
-- aspect ratio (what an aspect-ratio model uses anyway), onto a multiple of 8. The row and
-- the image report the size the model renders (finish_generation measures the file).
-- Only sizes no preset comes near (below 128 or above 8192) are still a 400.

create or replace function public.generation_parameters(
    p_prompt text,
    p_model_id text,
    p_model_version text default null,
    p_width integer default null,
    p_height integer default null,
    p_num_inference_steps integer default null,
    p_guidance_scale numeric default null,
    p_seed bigint default null,
    p_negative_prompt text default null,
    p_source_image_url text default null,
    p_strength numeric default null,
    p_style text default null
) returns jsonb
language plpgsql
stable
security definer
set search_path = public, pg_temp
as $$
declare
    m models;
    v_width integer;
    v_height integer;
    v_steps integer;
    v_guidance numeric;
    v_strength numeric;
    v_scale numeric;
begin
    -- Any whitespace, not only spaces (btrim's default), makes an empty prompt.
    if p_prompt is null or p_prompt !~ '\S' then
        perform imagegen.invalid('prompt', 'prompt is required');
    end if;
    if length(p_prompt) > 4000 then
        perform imagegen.invalid('prompt', 'prompt must be at most 4000 characters');
    end if;
    if p_negative_prompt is not null and length(p_negative_prompt) > 4000 then
        perform imagegen.invalid('negative_prompt', 'negative_prompt must be at most 4000 characters');
    end if;
    if p_style is not null and length(p_style) > 100 then
        perform imagegen.invalid('style', 'style must be at most 100 characters');
    end if;
    if p_model_id is null or length(btrim(p_model_id)) = 0 then
        perform imagegen.invalid('model_id', 'model_id is required');
    end if;

    -- The row's id (the web app sends models.id) or its Replicate id; operators' rows may
    -- share a replicate_id, so the active, default, first-sorted one wins.
    select * into m
    from models
    where id::text = lower(p_model_id) or replicate_id = p_model_id
    order by id::text = lower(p_model_id) desc, is_active desc nulls last,
             is_default desc nulls last, sort_order nulls last, created_at
    limit 1;
    if not found then
        perform imagegen.invalid('model_id', format('Unknown model: %s', p_model_id));
    end if;
    if not coalesce(m.is_active, true) then
        perform imagegen.invalid('model_id', format('Model %s is not available', p_model_id));
    end if;
    -- A version names the exact Replicate model that runs (and its price): only the
    -- model's own.
    if p_model_version is not null and p_model_version is distinct from m.version then
        perform imagegen.invalid('model_version',
            format('model_version must be empty or %s''s own version', m.name));
    end if;

    -- The operators' rows may leave limits empty: CONTRACT §1's defaults stand in.
    m.min_width := coalesce(m.min_width, 256);
    m.max_width := coalesce(m.max_width, 2048);
    m.min_height := coalesce(m.min_height, 256);
    m.max_height := coalesce(m.max_height, 2048);
    m.max_steps := coalesce(m.max_steps, 50);
    m.strength_min := coalesce(m.strength_min, 0);
    m.strength_max := coalesce(m.strength_max, 1);
    v_width := coalesce(p_width, m.default_width, 1024);
    v_height := coalesce(p_height, m.default_height, 1024);
    v_steps := coalesce(p_num_inference_steps, m.default_steps, 30);
    v_guidance := coalesce(p_guidance_scale, m.default_guidance_scale, 7.5);

    -- Any size the apps offer fits any model: beyond these bounds it is no image size.
    if v_width not between 128 and 8192 then
        perform imagegen.invalid('width', 'width must be between 128 and 8192');
    end if;
    if v_height not between 128 and 8192 then
        perform imagegen.invalid('height', 'height must be between 128 and 8192');
    end if;
    -- Within them, a size the model does not take is scaled, keeping its shape, until it
    -- does (then clamped where no scale fits both sides), on a multiple of 8.
    if v_width not between m.min_width and m.max_width
       or v_height not between m.min_height and m.max_height then
        v_scale := least(1.0, m.max_width::numeric / v_width, m.max_height::numeric / v_height);
        v_scale := greatest(v_scale, m.min_width::numeric / v_width,
                            m.min_height::numeric / v_height);
        v_width := least(greatest(round(v_width * v_scale / 8) * 8, m.min_width), m.max_width);
        v_height := least(greatest(round(v_height * v_scale / 8) * 8, m.min_height),
                          m.max_height);
    end if;
    if v_steps not between 1 and m.max_steps then
        perform imagegen.invalid('num_inference_steps',
                         format('num_inference_steps must be between 1 and %s for %s',
                                m.max_steps, m.name));
    end if;
    if v_guidance not between 0 and 50 then
        perform imagegen.invalid('guidance_scale', 'guidance_scale must be between 0 and 50');
    end if;
    if p_seed is not null and p_seed not between 0 and 4294967295 then
        perform imagegen.invalid('seed', 'seed must be between 0 and 4294967295');
    end if;

    if p_source_image_url is not null then
        if not coalesce(m.supports_img2img, false) then
            perform imagegen.invalid('source_image_url',
                             format('%s does not support image-to-image', m.name));
        end if;
        if p_source_image_url !~* '^https?://[^\s]+$' or length(p_source_image_url) > 2048 then
            perform imagegen.invalid('source_image_url', 'source_image_url must be an http(s) URL');
        end if;
        v_strength := coalesce(p_strength, m.default_strength, 0.8);
        if v_strength not between m.strength_min and m.strength_max then
            perform imagegen.invalid('strength', format('strength must be between %s and %s for %s',
                                                m.strength_min, m.strength_max, m.name));
        end if;
    elsif p_strength is not null then
        perform imagegen.invalid('strength', 'strength needs a source_image_url');
    end if;

    return jsonb_build_object(
        'prompt', p_prompt,
        'negative_prompt', p_negative_prompt,
        'model_id', m.replicate_id,
        'model_name', m.name,
        'model_row_id', m.id,
        'model_version', m.version,
        'style', p_style,
        'width', v_width,
        'height', v_height,
        'num_inference_steps', v_steps,
        'guidance_scale', v_guidance,
        'seed', p_seed,
        'source_image_url', p_source_image_url,
        'strength', v_strength
    );
end
$$;
