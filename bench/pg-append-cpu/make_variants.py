# Writes variants.sql (every variant's function and run_ procedure), simp.sql (the plain-expression
# variants simp, simpx, simpxc), run_v8real.sql (append_v8 as migration 8 creates it), and
# inter2.sql (the interleaving procedure knowing every variant). Run from this directory.
import re, subprocess
subprocess.run("python3 gen.py > variants.sql", shell=True, check=True)
exec(open('simp.py').read())
src = open('gen.py').read().split("variants = {")[0]
ns = {}; exec(src, ns)
out = []
for name, kw in {'simp': dict(), 'simpx': dict(exc=False), 'simpxc': dict(exc=False, clock=False)}.items():
    out.append(simp('f_' + name, **kw))
    out.append(ns['proc'](name, f"PERFORM * FROM mz.f_{name}(v_stream, 'order', -1, v_ids, v_types, v_sv, v_nul, v_nul, v_pl, v_md);"))
open('simp.sql', 'w').write('\n'.join(out))
rs = open('../../framework/src/store/postgres/schema.rs').read()
m = re.search(r'\n        8 => format!\(\s*r#"(.*?)"#', rs, re.S)
open('m8_in_mz.sql', 'w').write(m.group(1).replace('{s}', 'mz').replace('{class}', '12345').replace('{positions}', '987654321'))
open('run_v8real.sql', 'w').write(ns['proc']('v8real', "PERFORM * FROM mz.append_v8(v_stream, 'order', -1, v_ids, v_types, v_sv, v_nul, v_nul, v_pl, v_md);"))
names = ['none', 'bare', 'v7', 'noexc', 'noclock', 'uclock', 'noolder', 'txtolder', 'posnext', 'merged', 'noidx',
         'cand1', 'cand2', 'cand3', 'v8a', 'v8b', 'v8c', 'simp', 'simpx', 'simpxc', 'v8real']
cases = '\n'.join(f"      {'IF' if i == 0 else 'ELSIF'} v = '{n}' THEN CALL mz.run_{n}(p_per, v_off::int);" for i, n in enumerate(names))
s = open('inter.sql').read().replace("      EXECUTE format('CALL mz.run_%s(%s, %s)', v, p_per, v_off);",
                                     cases + "\n      ELSE RAISE EXCEPTION 'no variant %', v; END IF;")
open('inter2.sql', 'w').write(s)
