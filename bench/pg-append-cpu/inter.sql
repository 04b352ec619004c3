CREATE UNLOGGED TABLE IF NOT EXISTS mz.results (run text, variant text, block int, calls int, ns bigint, wall_us double precision, la text);
CREATE OR REPLACE FUNCTION mz.cpu_ns() RETURNS bigint LANGUAGE sql AS
$$ SELECT split_part(pg_read_file('/proc/' || pg_backend_pid() || '/schedstat'), ' ', 1)::bigint $$;
CREATE OR REPLACE PROCEDURE mz.interleave(p_run text, p_variants text[], p_blocks int, p_per int, p_off bigint)
LANGUAGE plpgsql AS $p$
DECLARE v_t0 bigint; v_t1 bigint; v_w0 timestamptz; v_off bigint := p_off; v text; v_order text[];
BEGIN
  FOR b IN 1..p_blocks LOOP
    -- rotate the order each block
    v_order := p_variants[(b % cardinality(p_variants)) + 1 :] || p_variants[: (b % cardinality(p_variants))];
    FOREACH v IN ARRAY v_order LOOP
      v_t0 := mz.cpu_ns(); v_w0 := clock_timestamp();
      EXECUTE format('CALL mz.run_%s(%s, %s)', v, p_per, v_off);
      v_t1 := mz.cpu_ns();
      INSERT INTO mz.results VALUES (p_run, v, b, p_per, v_t1 - v_t0,
          extract(epoch FROM clock_timestamp() - v_w0) * 1e6, split_part(pg_read_file('/proc/loadavg'), ' ', 1));
      COMMIT;
      v_off := v_off + p_per;
    END LOOP;
  END LOOP;
END
$p$;
