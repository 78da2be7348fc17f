#include <stdio.h>
void run(unsigned long *out);
int main(void) { unsigned long o[6]; run(o); for (int i = 0; i < 6; i++) printf("0x%016lXUL,\n", o[i]); return 0; }
