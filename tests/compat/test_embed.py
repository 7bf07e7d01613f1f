"""`select('*, images(*)')` embeds `images` as an array (docs/CLIENTS.md flow 3: the apps read
`generation.images[0]`), while a generation still has at most one image
(sql/0021_gallery_writes.sql), on a fresh install and on the upgraded old database."""

from __future__ import annotations

import uuid
from typing import Any

import psycopg
import pytest
from psycopg.rows import dict_row

from tests.conftest import make_user
from tests.support.old_picture import OldPicture, build_old_picture, old_rows
from tests.support.schema_snapshot import dump_schema
from worker.migrate import MigrationError, migrate

Conn = psycopg.Connection[dict[str, Any]]

# How PostgREST's schema cache decides many-to-one or one-to-one (SchemaCache.hs,
# allM2OandO2ORels): the foreign key's columns against every primary key and UNIQUE
# constraint of its table, as pg_constraint lists them.
RELATIONSHIPS = """
with pks_uniques_cols as (
    select conrelid, jsonb_agg(column_info.cols) as cols
    from pg_constraint
    join lateral (
        select array_agg(cols.attname order by cols.attnum) as cols
        from (select unnest(conkey) as col) _
        join pg_attribute cols on cols.attrelid = conrelid and cols.attnum = col
    ) column_info on true
    where contype in ('p', 'u') and connamespace::regnamespace::text <> 'pg_catalog'
    group by conrelid
)
select tab.relname as table_name, other.relname as foreign_table_name,
       coalesce(column_info.cols in (select * from jsonb_array_elements(pks_uqs.cols)), false)
           as one_to_one
from pg_constraint traint
join lateral (
    select jsonb_agg(cols.attname order by ord) as cols
    from unnest(traint.conkey, traint.confkey) with ordinality as _(col, ref, ord)
    join pg_attribute cols on cols.attrelid = traint.conrelid and cols.attnum = col
) column_info on true
join pg_class tab on tab.oid = traint.conrelid
join pg_class other on other.oid = traint.confrelid
left join pks_uniques_cols pks_uqs on pks_uqs.conrelid = traint.conrelid
where traint.contype = 'f' and traint.conparentid = 0
  and tab.relname = 'images' and other.relname = 'image_generations'
"""


def assert_images_embed_as_an_array_of_at_most_one(conn: Conn, user_id: uuid.UUID) -> None:
    # The gallery's columns (docs/CLIENTS.md flow 6) are there.
    columns = conn.execute(
        "select column_name from information_schema.columns"
        " where table_schema = 'public' and table_name = 'images'"
    ).fetchall()
    assert {"archived_at", "download_count", "source_image_id", "generation_strength"} <= {
        row["column_name"] for row in columns
    }
    # Many-to-one from images: embedded from image_generations, images is an array.
    assert conn.execute(RELATIONSHIPS).fetchall() == [
        {"table_name": "images", "foreign_table_name": "image_generations", "one_to_one": False}
    ]
    generation = conn.execute(
        "insert into image_generations (user_id, prompt, status) values (%s, 'x', 'completed')"
        " returning id",
        (user_id,),
    ).fetchone()
    assert generation is not None
    insert = (
        "insert into images (generation_id, user_id, filename, storage_path, public_url, prompt)"
        " values (%s, %s, 'f.webp', 'p/f.webp', 'https://cdn.test/f.webp', 'x')"
    )
    conn.execute(insert, (generation["id"], user_id))
    with pytest.raises(psycopg.errors.UniqueViolation):
        conn.execute(insert, (generation["id"], user_id))
    # An upsert on the generation still finds its unique index.
    conn.execute(
        insert + " on conflict (generation_id) do update set file_size = 1",
        (generation["id"], user_id),
    )
    count = conn.execute(
        "select count(*) as n, max(file_size) as size from images where generation_id = %s",
        (generation["id"],),
    ).fetchone()
    assert count == {"n": 1, "size": 1}


def test_images_embed_as_an_array_on_a_fresh_install(conn: Conn) -> None:
    assert_images_embed_as_an_array_of_at_most_one(conn, make_user(conn))


def test_images_embed_as_an_array_on_the_upgraded_old_database(
    upgraded_picture: tuple[OldPicture, Conn],
) -> None:
    old, conn = upgraded_picture
    assert_images_embed_as_an_array_of_at_most_one(conn, old.alice)


def test_an_old_database_with_two_images_of_one_generation_is_not_upgraded(
    empty_database_url: str,
) -> None:
    old = build_old_picture(empty_database_url)
    with psycopg.connect(empty_database_url, autocommit=True, row_factory=dict_row) as conn:
        conn.execute(
            "insert into images (generation_id, user_id, filename, storage_path, public_url,"
            " prompt) select generation_id, user_id, filename, storage_path, public_url, prompt"
            " from images where generation_id = %s",
            (old.completed[0],),
        )
        schema, rows = dump_schema(empty_database_url), old_rows(conn)
        with pytest.raises(MigrationError, match="images has 1 generations with more than one"):
            migrate(empty_database_url)
        assert dump_schema(empty_database_url) == schema
        assert old_rows(conn) == rows
