import re,sys
src=open('../../framework/src/store/postgres/schema.rs').read()
schema=sys.argv[1]
out=[f'DROP SCHEMA IF EXISTS {schema} CASCADE; CREATE SCHEMA {schema};']
for m in re.finditer(r'\n        (\d+) => format!\(\s*r#"(.*?)"#', src, re.S):
    sql=m.group(2)
    sql=sql.replace('{s}',schema).replace('{class}','12345').replace('{positions}','987654321').replace('{channel}','tidings_'+schema)
    sql=sql.replace('{{','{').replace('}}','}')
    out.append(f'-- migration {m.group(1)}\n'+sql)
print('\n'.join(out))
