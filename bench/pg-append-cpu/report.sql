WITH r AS (SELECT variant, block, ns::float8 / calls / 1000 AS us FROM mz.results WHERE run = :'run'),
p AS (SELECT r.variant, r.us - v.us AS d FROM r JOIN r v ON v.block = r.block AND v.variant = 'v7')
SELECT r.variant, count(*) AS blocks,
       round(percentile_cont(0.5) WITHIN GROUP (ORDER BY us)::numeric, 1) AS med_us,
       round(min(us)::numeric, 1) AS min_us, round(max(us)::numeric, 1) AS max_us,
       (SELECT round(percentile_cont(0.5) WITHIN GROUP (ORDER BY d)::numeric, 1) FROM p WHERE p.variant = r.variant) AS med_diff_vs_v7,
       (SELECT round(percentile_cont(0.25) WITHIN GROUP (ORDER BY d)::numeric, 1) || '..' || round(percentile_cont(0.75) WITHIN GROUP (ORDER BY d)::numeric, 1) FROM p WHERE p.variant = r.variant) AS iqr_diff
FROM r GROUP BY r.variant ORDER BY med_us;
SELECT min(la), max(la) FROM mz.results WHERE run = :'run';
