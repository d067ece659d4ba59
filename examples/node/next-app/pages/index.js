export default function Home({ pid }) {
  return <p>pid={pid} next=yes</p>;
}

export async function getServerSideProps() {
  return { props: { pid: process.pid } };
}
